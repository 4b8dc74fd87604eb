"""Chat from the TUI through a real CH server, against a real second client (ChLink + the
chat engine): c rings the sender, rings pop up anywhere, alarms after the callee was off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from textual.widgets import Input

from chmail import protocol_routing as r
from chmail.client.chat import ChatEngine, mail_ref
from chmail.client.chatsession import Line
from chmail.client.chlink import ChLink
from chmail.client.compose import stamp
from chmail.client.tui.screens.alarms import AlarmsScreen
from chmail.client.tui.screens.compose import ComposeScreen
from chmail.client.tui.screens.operator import OperatorScreen
from chmail.client.tui.screens.ring import RingScreen
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.message_list import MessageList
from chmail.client.tui.widgets.status import StatusBar
from tests.fixtures.chserver import RunningServer, ServerFactory
from tests.fixtures.mailstack import MailUser
from tests.tui_env import (
    add_ch_user,
    chat_server_config,
    config_for,
    deliver,
    deliver_chat_mail,
    mail,
    running_tui,
    screen_text,
    wait_for,
)


@asynccontextmanager
async def other_client(srv: RunningServer, user: MailUser) -> AsyncIterator[ChatEngine]:
    """The other side: a real client (live link + chat engine) logged in as ``user``."""
    link = ChLink(srv.host, srv.port, user.name, srv.passwords[user.name])
    await link.start()
    engine = ChatEngine(link, user.name)
    try:
        yield engine
    finally:
        await engine.close()
        await link.close()


async def _server(factory: ServerFactory, *users: MailUser) -> RunningServer:
    srv = await factory(**chat_server_config())
    for u in users:
        await add_ch_user(srv, u)
    return srv


async def test_c_rings_sender_and_both_sides_talk(
    mail_user: MailUser, mail_user2: MailUser, chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """c on a chat mail rings its sender; after accept, lines flow both ways with read state."""
    alice, bob = mail_user, mail_user2
    srv = await _server(chserver_factory, alice, bob)
    await deliver_chat_mail(srv, bob, alice, "Lunch on Friday?")
    async with (
        other_client(srv, bob) as bob_engine,
        running_tui(config_for(alice, srv), tmp_path) as (app, pilot),
    ):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 1 and ml.current is not None, "the chat mail")
        await wait_for(pilot, lambda: "◉" in screen_text(app), "bob shown online")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "is online now" in screen_text(app), "presence line")
        await pilot.press("c")
        ring = await asyncio.wait_for(bob_engine.next_ring(), 15)
        assert ring.caller == alice.name
        assert ring.subject == "Lunch on Friday?"
        state = await bob_engine.answer(ring.call, True)
        session = await bob_engine.join(state)
        try:
            await wait_for(pilot, lambda: bool(app.screen.query(ChatPane)), "chat pane")
            session.say("hi alice")
            await wait_for(pilot, lambda: f"{bob.name}: hi alice" in screen_text(app), "bob's line")
            box = app.screen.query_one("#chat-input", Input)
            box.focus()
            await pilot.press(*"hello bob", "enter")

            async def heard() -> None:
                while not any(ln.text == "hello bob" and not ln.mine for ln in session.lines):
                    await session.changed()

            await asyncio.wait_for(heard(), 15)
            mine = next(ln for ln in session.lines if ln.text == "hi alice")
            assert isinstance(mine, Line)
            assert mine.seq > 0
            session.mark_read()
            await wait_for(pilot, lambda: f"read by {bob.name}" in screen_text(app), "read state")

            box.focus()
            await pilot.press("ctrl+t")
            status = app.screen.query_one(StatusBar)
            await wait_for(pilot, lambda: "Transcript filed into INBOX" in status.note, "filed")
            maildir = alice.stack.dovecot.maildir(alice.name)
            filed = [
                f.read_bytes()
                for f in [*maildir.glob("cur/*"), *maildir.glob("new/*")]
                if b"X-Chmail-Transcript" in f.read_bytes()
            ]
            assert len(filed) == 1
            assert b"hello bob" in filed[0]
        finally:
            await session.close()


async def test_c_without_headers_says_why(mail_user: MailUser, tmp_path: Path) -> None:
    """c on a mail without X-CH headers explains in words that it cannot chat."""
    msg, _ = mail("Carol <carol@example.org>", mail_user.address, "Plain mail", "No chat.\n")
    await deliver(mail_user, bytes(msg))
    async with running_tui(config_for(mail_user, None), tmp_path) as (app, pilot):
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.current is not None)
        await pilot.press("c")
        status = app.screen.query_one(StatusBar)
        await wait_for(pilot, lambda: bool(status.error))
        assert "no chat link" in status.error
        assert "X-CH" in status.error


async def test_ring_pops_up_while_composing(
    mail_user: MailUser, mail_user2: MailUser, chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """A ring arrives while the user writes a mail: it pops up over the editor; y accepts."""
    alice, bob = mail_user, mail_user2
    srv = await _server(chserver_factory, alice, bob)
    mid = await deliver_chat_mail(srv, alice, bob, "Slides for Monday")
    raw = next((bob.stack.dovecot.maildir(bob.name) / "new").glob("*")).read_bytes()
    assert mid.encode() in raw
    async with running_tui(config_for(alice, srv), tmp_path) as (app, pilot):
        await wait_for(pilot, lambda: app.screen.query_one(StatusBar).ch_state == "online")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ComposeScreen), "compose")
        async with other_client(srv, bob) as bob_engine:
            state = await bob_engine.escalate(mail_ref(raw))
            assert state.state == "ringing"
            await wait_for(pilot, lambda: isinstance(app.screen, RingScreen), "the ring")
            await wait_for(
                pilot,
                lambda: (
                    f"{bob.name} wants to chat" in screen_text(app)
                    and "Slides for Monday" in screen_text(app)
                ),
                "the ring names the caller and the mail",
            )
            await pilot.press("y")
            accepted = await bob_engine.wait_state(state.call, ("accepted",))
            assert accepted.state == "accepted"
            await wait_for(pilot, lambda: isinstance(app.screen, ComposeScreen), "back to mail")
            main = app.main
            assert main is not None
            await wait_for(pilot, lambda: bool(main.query(ChatPane)), "chat pane on main")


async def test_alarm_after_callee_was_offline(
    mail_user: MailUser, mail_user2: MailUser, chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """Calling an offline user leaves an alarm; at their next start it is listed, and Enter
    calls the caller back."""
    alice, bob = mail_user, mail_user2
    srv = await _server(chserver_factory, alice, bob)
    await deliver_chat_mail(srv, alice, bob, "Quarterly numbers")
    raw = next((bob.stack.dovecot.maildir(bob.name) / "new").glob("*")).read_bytes()
    async with other_client(srv, bob) as bob_engine:
        state = await bob_engine.escalate(mail_ref(raw))
        assert state.state == "alarmed"
    await deliver_chat_mail(srv, bob, alice, "Re: Quarterly numbers")
    async with (
        running_tui(config_for(alice, srv), tmp_path) as (app, pilot),
        other_client(srv, bob) as bob_engine,
    ):
        await wait_for(pilot, lambda: bool(app.alarms), "alarm pushed at login")
        assert app.alarms[0].caller == bob.name
        ml = app.screen.query_one(MessageList)
        await wait_for(pilot, lambda: ml.total == 1, "bob's chat mail synced")
        await pilot.press("A")
        await wait_for(pilot, lambda: isinstance(app.screen, AlarmsScreen), "alarms screen")
        await wait_for(pilot, lambda: "Quarterly numbers" in screen_text(app), "alarm listed")
        assert bob.name in screen_text(app)
        await pilot.press("enter")
        rang = asyncio.ensure_future(bob_engine.next_ring())
        await wait_for(pilot, rang.done, "bob's phone rings")
        ring = rang.result()
        assert ring.caller == alice.name
        assert ring.subject == "Re: Quarterly numbers"
        main = app.main
        assert main is not None
        await wait_for(pilot, lambda: bool(main.query(ChatPane)), "chat pane while ringing")


async def test_operator_sees_campaign_chat_in_queue(
    mail_user: MailUser, mail_user2: MailUser, chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """A customer's chat on a campaign mail is routed to the operator, whose ring and queue
    show the campaign and product; Enter in the queue takes it."""
    operator, member = mail_user, mail_user2
    srv = await _server(chserver_factory, operator, member)
    await srv.add_user("mall", emails=["mall@shop.example"])
    mall = ChLink(srv.host, srv.port, "mall", srv.passwords["mall"])
    await mall.start()
    tasks: list[asyncio.Task[object]] = []

    def brief(msg: object) -> None:
        if isinstance(msg, r.RouteEvent) and msg.kind == "routed":
            data = {"campaign": "Autumn sale", "product": "A-100 espresso machine"}
            out = r.Brief(call=msg.call, operator=msg.operator, campaign=7, data=data)
            tasks.append(asyncio.ensure_future(mall.request(out)))

    mall.on_push(brief)
    try:
        await mall.request(r.RoutePool(campaign=7, operators=[operator.name]))
        msg, mid = mail("mall@shop.example", member.address, "20% off the A-100", "Ask us!\n")
        link = await mall.alloc_port(mid, [member.address], context="campaign=7; sku=A-100")
        raw = stamp(bytes(msg), link)
        async with (
            running_tui(config_for(operator, srv), tmp_path) as (app, pilot),
            other_client(srv, member) as customer,
        ):
            await wait_for(pilot, lambda: app.screen.query_one(StatusBar).ch_state == "online")
            state = await customer.escalate(mail_ref(raw))
            await wait_for(pilot, lambda: isinstance(app.screen, RingScreen), "the ring")
            await wait_for(pilot, lambda: "Autumn sale" in screen_text(app), "the brief")
            await pilot.press("l")
            await wait_for(pilot, lambda: not isinstance(app.screen, RingScreen), "put off")
            await pilot.press("Q")
            await wait_for(pilot, lambda: isinstance(app.screen, OperatorScreen), "queue")
            await wait_for(pilot, lambda: member.name in screen_text(app), "customer listed")
            text = screen_text(app)
            assert "Autumn sale" in text
            assert "A-100 espresso machine" in text
            await pilot.press("enter")
            accepted = await customer.wait_state(state.call, ("accepted",))
            assert accepted.state == "accepted"
            main = app.main
            assert main is not None
            await wait_for(pilot, lambda: bool(main.query(ChatPane)), "chat pane")
    finally:
        await mall.close()
        for t in tasks:
            t.cancel()
