"""A routed campaign chat the operator turns down is passed on, on a real CH server with
two real operators (ChLink + chat engine each) and real members."""

from __future__ import annotations

import asyncio

from chmail import protocol as p
from chmail import protocol_routing as r
from chmail.client.chat import CallEvent, MailRef, RingEvent, mail_ref
from chmail.client.chatsession import Line
from tests.chat_helpers import Client, chat_config, connect, next_event
from tests.fixtures.chserver import ServerFactory


async def campaign_mail(mall: Client, member: str, campaign: int = 7) -> MailRef:
    """The campaign mail the shop sent ``member``: its own signature, the campaign's context."""
    mid = f"<shop.{campaign}.{member}@mall.test>"
    context = f"campaign={campaign}; sku=A-100; lang=en"
    link = await mall.link.alloc_port(mid, [f"{member}@example.com"], (), context)
    return mail_ref([*link.headers(), ("Message-ID", mid), ("Subject", "Trail shoe")])


async def rung(op: Client, member: str) -> int:
    """The call id of the next ring ``op`` gets from ``member``."""
    ev = await next_event(op.engine.events, RingEvent, lambda e: e.ring.caller == member)
    return ev.ring.call


async def member_state(m: Client, state: str) -> p.CallState:
    ev = await next_event(m.engine.events, CallEvent, lambda e: e.state.state == state)
    return ev.state


async def test_declined_or_unanswered_chat_goes_to_next_operator_or_queue(
    chserver_factory: ServerFactory,
) -> None:
    """Olga declines Ann's chat: Piet is rung and they talk. Bob's chat rings Olga, who
    lets it ring out: Piet is busy, so Bob waits first in the queue and is rung by Piet
    when Piet's chat ends; the shop sees 'passed', never 'ended', for the turned-down calls."""
    srv = await chserver_factory(**chat_config(ring_timeout=1.5, ring_interval=0.5))
    for login in ("mall", "olga", "piet", "ann", "bob"):
        await srv.add_user(login, emails=[f"{login}@example.com"])
    clients: list[Client] = []
    try:
        for login in ("mall", "olga", "piet", "ann", "bob"):
            clients.append(await connect(srv, login))
        mall, olga, piet, ann, bob = clients
        shop_events = mall.link.subscribe()
        ok = await mall.link.request(
            r.RoutePool(campaign=7, operators=["olga", "piet"], capacity=1)
        )
        assert isinstance(ok, p.Ok)

        first = await ann.engine.escalate(await campaign_mail(mall, "ann"))
        assert (first.state, first.peer) == ("ringing", "olga")
        declined = await olga.engine.answer(await rung(olga, "ann"), accept=False)
        assert declined.state == "declined"
        again = await member_state(ann, "ringing")
        assert again.peer == "piet"
        assert again.call != first.call
        mine = await piet.engine.answer(await rung(piet, "ann"), accept=True)
        theirs = await ann.engine.wait_state(again.call, ("accepted",))
        s_piet, s_ann = await piet.join(mine), await ann.join(theirs)
        s_ann.say("Is it waterproof?")
        got = await next_event(s_piet.events, Line, lambda ln: not ln.mine)
        assert got.text == "Is it waterproof?"

        st_bob = await bob.engine.escalate(await campaign_mail(mall, "bob"))
        assert (st_bob.state, st_bob.peer) == ("ringing", "olga")  # piet is at capacity
        await rung(olga, "bob")  # ... and olga lets it ring out
        queued = await member_state(bob, "queued")
        assert "you are next" in queued.message
        await piet.engine.hangup(mine.call)  # piet is free: bob, first in the queue, rings
        moved = await member_state(bob, "ringing")
        assert moved.peer == "piet"
        await rung(piet, "bob")

        kinds: list[tuple[str, str, str]] = []
        async with asyncio.timeout(15):
            while ("routed", "bob", "piet") not in kinds:
                ev = await shop_events.get()
                if isinstance(ev, r.RouteEvent):
                    kinds.append((ev.kind, ev.member, ev.operator))
        assert ("passed", "ann", "olga") in kinds
        assert ("passed", "bob", "olga") in kinds
        assert [k for k in kinds if k[0] == "asked"] == [("asked", "ann", ""), ("asked", "bob", "")]
        assert ("ended", "bob", "olga") not in kinds
    finally:
        for c in clients:
            await c.close()
