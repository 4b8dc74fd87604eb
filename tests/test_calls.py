"""Calls end to end: a real CH server, real clients (ChLink + chat engine), real sessions."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chmail import headers
from chmail import protocol as p
from chmail.client.chat import AlarmEvent, CallEvent, RingEvent
from chmail.client.chatsession import EndedEvent, Line, ReadEvent, TypingEvent
from chmail.errors import ChmailError
from tests.chat_helpers import Client, chat_config, connect, next_event, until
from tests.fixtures.chserver import ServerFactory

World = Callable[..., Awaitable[dict[str, Client]]]
USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture
async def world(chserver_factory: ServerFactory) -> AsyncIterator[World]:
    """A server (config overrides as keywords) with four users; the ``online`` ones log in."""
    clients: list[Client] = []

    async def make(online: tuple[str, ...] = USERS, **cfg: Any) -> dict[str, Client]:
        srv = await chserver_factory(**chat_config(**cfg))
        for login in USERS:
            await srv.add_user(login)
        got = {login: await connect(srv, login) for login in online}
        clients.extend(got.values())
        return got

    yield make
    for c in clients:
        await c.close()


async def test_ring_accept_and_messages_both_ways(world: World) -> None:
    """bob rings alice about her mail; she accepts; both chat on the mail's port."""
    c = await world()
    alice, bob = c["alice"], c["bob"]
    mail = await alice.send_mail("bob@example.org", subject="Lunch?")
    st = await bob.engine.escalate(mail)
    assert (st.state, st.peer) == ("ringing", "alice")
    ring = (await next_event(alice.engine.events, RingEvent)).ring
    assert (ring.caller, ring.subject, ring.message_id) == ("bob", "Lunch?", mail.message_id)
    assert ring.port == mail.link.port
    mine = await alice.engine.answer(ring.call, accept=True)
    assert mine.state == "accepted"
    assert mine.port == mail.link.port
    theirs = await bob.engine.wait_state(st.call)
    assert theirs.state == "accepted"
    a = await alice.join(mine)
    b = await bob.join(theirs)
    b.say("hi alice, noon?")
    assert (await next_event(a.events, Line, lambda ln: not ln.mine)).text == "hi alice, noon?"
    a.say("noon is fine")
    got = await next_event(b.events, Line, lambda ln: not ln.mine)
    assert (got.login, got.text) == ("alice", "noon is fine")
    b.typing(True)
    assert (await next_event(a.events, TypingEvent)).login == "bob"
    b.mark_read(got.seq)
    read = await next_event(a.events, ReadEvent)
    assert (read.login, read.seq) == ("bob", got.seq)


async def test_decline_tells_the_caller(world: World) -> None:
    """A declined call is declined on both sides and opens no chat."""
    c = await world()
    alice, bob = c["alice"], c["bob"]
    mail = await alice.send_mail("bob@example.org")
    st = await bob.engine.escalate(mail)
    ring = (await next_event(alice.engine.events, RingEvent)).ring
    assert (await alice.engine.answer(ring.call, accept=False)).state == "declined"
    final = await bob.engine.wait_state(st.call)
    assert final.state == "declined"
    assert "declined" in final.message


async def test_unanswered_ring_repeats_then_is_missed_on_both_sides(world: World) -> None:
    """S115: the callee is rung again while silent; at the timeout both see missed."""
    c = await world(ring_timeout=0.6, ring_interval=0.1)
    alice, bob = c["alice"], c["bob"]
    pushes = alice.link.subscribe()
    mail = await alice.send_mail("bob@example.org", subject="Ping")
    st = await bob.engine.escalate(mail)
    assert (await bob.engine.wait_state(st.call)).state == "missed"
    rings = []
    while not pushes.empty():
        msg = pushes.get_nowait()
        if isinstance(msg, p.Ring):
            rings.append(msg.n)
    assert len(rings) >= 2  # rung again while silent
    assert rings == list(range(1, len(rings) + 1))
    seen = await next_event(alice.engine.events, CallEvent, lambda e: e.state.state == "missed")
    assert seen.state.call == st.call
    assert alice.engine.rings == {}
    alarm = await next_event(alice.engine.events, AlarmEvent)
    assert alarm.alarms[-1]["caller"] == "bob"
    assert (await alice.engine.alarms())[-1]["subject"] == "Ping"


async def test_caller_can_hang_up_while_it_rings(world: World) -> None:
    """A caller who hangs up cancels the ring on the callee's side."""
    c = await world()
    alice, bob = c["alice"], c["bob"]
    mail = await alice.send_mail("bob@example.org")
    st = await bob.engine.escalate(mail)
    await next_event(alice.engine.events, RingEvent)
    assert (await bob.engine.hangup(st.call)).state == "cancelled"
    gone = await next_event(alice.engine.events, CallEvent, lambda e: e.state.call == st.call)
    assert gone.state.state == "cancelled"


def _tamper(mail: Any, **changes: Any) -> Any:
    return dataclasses.replace(mail, link=dataclasses.replace(mail.link, **changes))


async def test_bad_links_ring_nobody_and_say_why(world: World) -> None:
    """Forged, altered and foreign links are refused, each with its own reason."""
    c = await world()
    alice, bob, dave = c["alice"], c["bob"], c["dave"]
    mail = await alice.send_mail("bob@example.org")
    forged = _tamper(mail, mac="A" * 43)
    altered = dataclasses.replace(mail, message_id="<other@example.org>")
    cases = [
        (bob, forged, "link_forged", "signature"),
        (bob, altered, "link_altered", "changed"),
        (dave, mail, "not_recipient", "recipients"),
        (alice, mail, "invalid", "your own mail"),
    ]
    for who, link, code, words in cases:
        with pytest.raises(ChmailError) as err:
            await who.engine.escalate(link)
        assert err.value.code == code
        assert words in str(err.value)
    st = await bob.engine.escalate(mail)  # the first ring alice gets is the valid one
    ring = (await next_event(alice.engine.events, RingEvent)).ring
    assert ring.call == st.call


async def test_expired_and_recycled_links(world: World) -> None:
    """An expired lease and a port since given to another mail ring nobody."""
    one = chat_config()["ports"].split("-")[0]
    c = await world(ports=f"{one}-{one}", lease_days=2 / 86400)
    alice, bob = c["alice"], c["bob"]
    old = await alice.send_mail("bob@example.org")
    await until(lambda: time.time() >= old.link.expires)
    with pytest.raises(ChmailError) as err:
        await bob.engine.escalate(old)
    assert err.value.code == "link_expired"
    new = await alice.send_mail("carol@example.org")  # the only port is recycled
    assert new.link.port == old.link.port
    assert new.link.lease > old.link.lease
    with pytest.raises(ChmailError) as err:
        await bob.engine.escalate(old)
    assert err.value.code == "link_recycled"
    assert headers.REASONS["link_recycled"] in str(err.value)


async def test_ring_rate_limit_per_caller(world: World) -> None:
    """Ringing too often is refused with a clear error; others can still ring."""
    c = await world(rings_per_minute_per_caller=1)
    alice, bob, carol = c["alice"], c["bob"], c["carol"]
    one = await alice.send_mail("bob@example.org", "carol@example.org")
    two = await alice.send_mail("bob@example.org", "carol@example.org")
    st = await bob.engine.escalate(one)
    await bob.engine.hangup(st.call)
    with pytest.raises(ChmailError) as err:
        await bob.engine.escalate(two)
    assert err.value.code == "rate_limited"
    assert (await carol.engine.escalate(two)).state == "ringing"


async def test_three_participants_on_one_port(world: World) -> None:
    """Another recipient of the same mail joins the chat that is going on."""
    c = await world()
    alice, bob, carol = c["alice"], c["bob"], c["carol"]
    mail = await alice.send_mail("bob@example.org", "carol@example.org")
    st = await bob.engine.escalate(mail)
    ring = (await next_event(alice.engine.events, RingEvent)).ring
    a = await alice.join(await alice.engine.answer(ring.call))
    b = await bob.join(await bob.engine.wait_state(st.call))
    third = await carol.engine.escalate(mail)
    assert third.state == "accepted"
    assert third.port == mail.link.port
    k = await carol.join(third)
    k.say("me too!")
    assert (await next_event(a.events, Line, lambda ln: not ln.mine)).login == "carol"
    assert (await next_event(b.events, Line, lambda ln: not ln.mine)).text == "me too!"
    await a.end()
    assert (await next_event(k.events, EndedEvent)).by == "alice"
    ended = await next_event(bob.engine.events, CallEvent, lambda e: e.state.state == "ended")
    assert ended.state.call == st.call


async def test_callee_going_offline_while_rung_gets_an_alarm(world: World) -> None:
    """S113: a callee whose computer goes off while it rings is alarmed instead."""
    c = await world(ring_interval=0.05, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    alice, bob = c["alice"], c["bob"]
    mail = await alice.send_mail("bob@example.org")
    st = await bob.engine.escalate(mail)
    await next_event(alice.engine.events, RingEvent)
    await alice.link.close()  # alice's machine is gone
    final = await bob.engine.wait_state(st.call)
    assert final.state == "alarmed"
    assert final.message == "alice went offline; they will be alarmed"


async def test_open_chat_limit_per_user(world: World) -> None:
    """A user at the limit of open chats is told so; the chat already open carries on."""
    c = await world(max_sessions_per_user=1)
    alice, bob = c["alice"], c["bob"]
    one = await alice.send_mail("bob@example.org")
    two = await alice.send_mail("bob@example.org")
    st = await bob.engine.escalate(one)
    ring = (await next_event(alice.engine.events, RingEvent)).ring
    a = await alice.join(await alice.engine.answer(ring.call))
    b = await bob.join(await bob.engine.wait_state(st.call))
    with pytest.raises(ChmailError) as err:
        await bob.engine.escalate(two)
    assert err.value.code == "limit"
    assert "chats open" in str(err.value)
    b.say("still here")
    assert (await next_event(a.events, Line, lambda ln: not ln.mine)).text == "still here"


async def test_ring_rate_limit_per_callee(world: World) -> None:
    """A callee rung too often is protected; the caller is told why in plain words."""
    c = await world(rings_per_minute_per_callee=1)
    alice, bob, carol = c["alice"], c["bob"], c["carol"]
    one = await alice.send_mail("bob@example.org")
    two = await alice.send_mail("carol@example.org")
    st = await bob.engine.escalate(one)
    await bob.engine.hangup(st.call)
    with pytest.raises(ChmailError) as err:
        await carol.engine.escalate(two)
    assert err.value.code == "rate_limited"
    assert "alice is being rung too often" in str(err.value)
