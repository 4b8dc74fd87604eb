"""A routed campaign chat the operator turns down is passed on, on a real CH server with
two real operators (ChLink + chat engine each) and real members (a client, and the
chmail TUI on a real mailbox)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chmail import protocol as p
from chmail import protocol_routing as r
from chmail.client.chat import CallEvent, MailRef, RingEvent, mail_ref
from chmail.client.chatsession import Line
from chmail.client.compose import stamp
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.message_list import MessageList
from tests.chat_helpers import Client, chat_config, connect, next_event
from tests.fixtures.chserver import ServerFactory
from tests.fixtures.mailstack import MailUser
from tests.tui_env import add_ch_user, config_for, deliver, mail, running_tui, screen_text, wait_for


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


async def test_member_tui_follows_a_declined_chat_to_the_next_operator(
    mail_user: MailUser, chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """A member presses c on a campaign mail in chmail; Olga declines: the member's chat
    pane says Piet is being rung, and when Piet accepts it opens on Piet's chat."""
    member = mail_user
    srv = await chserver_factory(**chat_config())
    await add_ch_user(srv, member)
    for login in ("mall", "olga", "piet"):
        await srv.add_user(login, emails=[f"{login}@example.com"])
    clients: list[Client] = []
    try:
        for login in ("mall", "olga", "piet"):
            clients.append(await connect(srv, login))
        mall, olga, piet = clients
        await mall.link.request(r.RoutePool(campaign=7, operators=["olga", "piet"], capacity=1))
        msg, mid = mail("mall@example.com", member.address, "Trail shoe", "Press c to chat.\n")
        link = await mall.link.alloc_port(mid, [member.address], (), "campaign=7; sku=A-100")
        await deliver(member, stamp(bytes(msg), link), "mall@example.com")
        async with running_tui(config_for(member, srv), tmp_path) as (app, pilot):
            ml = app.screen.query_one(MessageList)
            await wait_for(pilot, lambda: ml.total == 1 and ml.current is not None, "the mail")
            await pilot.press("enter")
            await wait_for(pilot, lambda: "mall is online now" in screen_text(app), "presence")
            await pilot.press("c")
            await olga.engine.answer(await rung(olga, member.name), accept=False)
            await wait_for(pilot, lambda: "ringing piet" in screen_text(app), "passed on")
            state = await piet.engine.answer(await rung(piet, member.name), accept=True)
            talk = await piet.join(state)
            main = app.main
            assert main is not None
            await wait_for(pilot, lambda: "connected" in screen_text(app), "chat open")
            talk.say("Hi, Piet here")
            await wait_for(pilot, lambda: "piet: Hi, Piet here" in screen_text(app), "line")
            assert main.query_one(ChatPane).session == str(state.call)
            assert "Canned reply" not in screen_text(app)  # operator keys: operators only
    finally:
        for c in clients:
            await c.close()
