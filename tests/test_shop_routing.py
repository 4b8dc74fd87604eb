"""Operator routing on the real call service (SessionHub listeners, SQLite, alarms).

The CH server's connections are replaced by its seam (presence set, push recorder);
everything from the call onward is the server's own code."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chmail import headers, migrate
from chmail import protocol as p
from chmail import protocol_routing as r
from chmail.chserver.alarms import AlarmService
from chmail.chserver.calls import CallService, Lease, ServerSeam
from chmail.chserver.chathub import SessionHub
from chmail.chserver.routing import Router, pick
from chmail.config import ServerConfig
from chmail.devmail.dovecot import free_port

KEY = b"r" * 32
CONTEXT = "campaign=1; sku=A-100; lang=en"


@dataclass
class World:
    calls: CallService
    router: Router
    hub: SessionHub
    online: set[str]
    pushed: dict[str, list[p.Message]] = field(default_factory=lambda: defaultdict(list))
    leases: dict[int, Lease] = field(default_factory=dict)

    def mail(self, member: str) -> p.Call:
        """The campaign mail the shop sent ``member`` (own port, own signature)."""
        port = free_port()
        msgid = f"<shop.1.{member}@shop.test>"
        link = headers.sign(
            KEY,
            login="mall",
            port=port,
            host="127.0.0.1",
            lease=1,
            expires=int(time.time()) + 3600,
            message_id=msgid,
            context=CONTEXT,
        )
        rec = headers.LeaseRecord("mall", port, "127.0.0.1", 1, link.expires, msgid, CONTEXT)
        self.leases[port] = Lease(rec, frozenset({f"{member}@example.com"}))
        return p.Call(
            id=1,
            message_id=msgid,
            login="mall",
            port=port,
            host="127.0.0.1",
            sig=link.sig,
            context=CONTEXT,
            subject="Trail shoe",
        )

    def events(self, kind: str) -> list[r.RouteEvent]:
        return [m for m in self.pushed["mall"] if isinstance(m, r.RouteEvent) and m.kind == kind]

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                await asyncio.sleep(0.01)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = await migrate.connect(tmp_path / "chserver.sqlite", "chserver")
    cfg = ServerConfig(ring_timeout=30.0, ring_interval=5.0)
    hub = SessionHub(db, tmp_path / "chat.sqlite", KEY, cfg, "127.0.0.1")
    await hub.start()
    online = {"mall", "olga", "piet", "ann", "bob", "cho"}
    leases: dict[int, Lease] = {}
    pushed: dict[str, list[p.Message]] = defaultdict(list)

    def push(login: str, msg: p.Message) -> int:
        if login not in online:
            return 0
        pushed[login].append(msg)
        return 1

    async def lease(port: int) -> Lease | None:
        return leases.get(port)

    async def emails(login: str) -> list[str]:
        return [f"{login}@example.com"]

    seam = ServerSeam(
        db=db,
        key=KEY,
        config=cfg,
        public_host="127.0.0.1",
        is_online=lambda login: login in online,
        push=push,
        lease=lease,
        emails=emails,
        direct_host=lambda login: "",
    )
    alarms = AlarmService(db, cfg, push, emails)
    calls = CallService(seam, hub, alarms)
    router = Router(calls)
    w = World(calls, router, hub, online, pushed, leases)
    router.set_pool("mall", r.RoutePool(id=1, campaign=1, operators=["olga", "piet"], capacity=1))
    yield w
    await calls.close()
    await alarms.close()
    await hub.close()
    await db.close()


def test_pick_least_busy_online_operator() -> None:
    """Least busy online operator below capacity wins; ties go to the longest idle."""
    ops = ["olga", "piet", "quin"]
    assert pick(ops, {"olga", "piet"}, {"olga": 1}, 2, {}) == "piet"
    assert pick(ops, {"olga", "piet"}, {}, 2, {"olga": 5.0, "piet": 9.0}) == "olga"
    assert pick(ops, {"olga"}, {"olga": 2}, 2, {}) is None
    assert pick(ops, set(), {}, 2, {}) is None


async def test_chat_key_routes_to_least_busy_then_queues(world: World) -> None:
    """Members' calls ring the least busy operator; with all busy the next member waits
    with a position; when an operator's chat ends the queue moves and rings them."""
    ann = await world.calls.call("ann", world.mail("ann"))
    assert ann.state == "ringing"
    assert ann.peer == "olga"
    await world.until(lambda: any(isinstance(m, p.Ring) for m in world.pushed["olga"]))
    bob = await world.calls.call("bob", world.mail("bob"))
    assert (bob.state, bob.peer) == ("ringing", "piet")
    cho = await world.calls.call("cho", world.mail("cho"))
    assert cho.state == "queued"
    assert "you are next" in cho.message
    assert cho.call < 0
    answered = await world.calls.answer("olga", p.Answer(id=2, call=ann.call))
    assert answered.state == "accepted"
    assert [e.operator for e in world.events("answered")] == ["olga"]
    await world.calls.hangup("olga", p.Hangup(id=3, call=ann.call))
    await world.until(
        lambda: any(
            isinstance(m, p.CallState) and m.state == "ringing" for m in world.pushed["cho"]
        )
    )
    state = next(
        m for m in world.pushed["cho"] if isinstance(m, p.CallState) and m.state == "ringing"
    )
    assert state.peer == "olga"
    assert len(world.events("asked")) == 3
    assert len(world.events("queued")) == 1
    assert [e.member for e in world.events("routed")] == ["ann", "bob", "cho"]
    ended = world.events("ended")
    assert [(e.member, e.answered) for e in ended] == [("ann", True)]


async def test_queued_member_can_leave_the_queue(world: World) -> None:
    """A queued member who hangs up leaves the queue and it is counted as not answered."""
    await world.calls.call("ann", world.mail("ann"))
    await world.calls.call("bob", world.mail("bob"))
    cho = await world.calls.call("cho", world.mail("cho"))
    left = await world.calls.hangup("cho", p.Hangup(id=9, call=cho.call))
    assert left.state == "cancelled"
    assert left.id == 9
    assert [(e.member, e.answered) for e in world.events("ended")] == [("cho", False)]


async def test_no_operator_online_alarms_an_operator(world: World) -> None:
    """With the whole pool offline the call still lands: an operator gets the alarm."""
    world.online.difference_update({"olga", "piet"})
    st = await world.calls.call("ann", world.mail("ann"))
    assert st.state == "alarmed"
    assert st.peer == "olga"
    assert await world.calls.alarms.count("olga") == 1


async def test_operator_calls_offline_member_alarm_and_online_member_rings(
    world: World,
) -> None:
    """S209/S215-S219: dialling an offline member leaves an alarm; an online one rings."""
    off = await world.router.dial(
        "olga", r.RouteDial(id=5, member="dan", campaign=1, subject="Trail shoe")
    )
    assert off.state == "alarmed"
    assert await world.calls.alarms.count("dan") == 1
    on = await world.router.dial("piet", r.RouteDial(id=6, member="ann", campaign=1))
    assert on.state == "ringing"
    await world.until(
        lambda: any(isinstance(m, p.Ring) and m.caller == "piet" for m in world.pushed["ann"])
    )
    with pytest.raises(Exception, match="not an operator of that campaign"):
        await world.router.dial("ann", r.RouteDial(id=7, member="bob", campaign=1))


async def test_brief_and_tags_reach_only_the_right_side(world: World) -> None:
    """The shop's brief goes to a pool operator only; an operator's tags reach the shop."""
    world.router.forward_brief(
        "mall", r.Brief(call=1, operator="olga", campaign=1, data={"member": {"name": "Ann"}})
    )
    assert isinstance(world.pushed["olga"][-1], r.Brief)
    with pytest.raises(Exception, match="not in any of your pools"):
        world.router.forward_brief("ann", r.Brief(call=1, operator="olga", campaign=1))
    ann = await world.calls.call("ann", world.mail("ann"))
    world.router.tag("olga", r.RouteTag(id=4, call=ann.call, interests=["running"]))
    assert world.events("tag")[0].interests == ["running"]
    with pytest.raises(Exception, match="not a campaign chat of yours"):
        world.router.tag("piet", r.RouteTag(id=4, call=ann.call, interests=["x"]))


async def test_chat_turned_down_by_every_operator_ends_with_a_sentence(world: World) -> None:
    """Olga and then Piet decline Ann's chat: each decline passes it on, and when the
    whole pool has turned it down the member is told so and it counts as unanswered."""
    ann = await world.calls.call("ann", world.mail("ann"))
    assert ann.peer == "olga"
    await world.calls.answer("olga", p.Answer(id=2, call=ann.call, accept=False))

    def states() -> list[p.CallState]:
        return [m for m in world.pushed["ann"] if isinstance(m, p.CallState)]

    await world.until(lambda: any(s.state == "ringing" and s.peer == "piet" for s in states()))
    to_piet = next(s for s in states() if s.state == "ringing" and s.peer == "piet")
    await world.calls.answer("piet", p.Answer(id=3, call=to_piet.call, accept=False))
    await world.until(lambda: states()[-1].state == "missed")
    assert "none of our operators" in states()[-1].message
    assert [e.operator for e in world.events("passed")] == ["olga", "piet"]
    assert [(e.member, e.answered) for e in world.events("ended")] == [("ann", False)]
    assert not world.router._turned_down


async def test_operator_can_tag_after_the_chat_ended(world: World) -> None:
    """Tags sent after an answered chat has ended still reach the shop (only the
    operator who had that chat may send them)."""
    ann = await world.calls.call("ann", world.mail("ann"))
    await world.calls.answer("olga", p.Answer(id=2, call=ann.call))
    await world.calls.hangup("olga", p.Hangup(id=3, call=ann.call))
    await world.until(lambda: bool(world.events("ended")))
    world.router.tag("olga", r.RouteTag(id=4, call=ann.call, interests=["rain jackets"]))
    assert world.events("tag")[0].interests == ["rain jackets"]
    with pytest.raises(Exception, match="not a campaign chat of yours"):
        world.router.tag("piet", r.RouteTag(id=5, call=ann.call, interests=["x"]))
