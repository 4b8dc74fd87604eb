"""The chat verbs of the main screen: escalate (S107), talk, leave, file the transcript,
alarms (S117) and the operator queue. Each network call runs in a worker."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from chmail.client.cache_models import Message
from chmail.client.tui.api import ChatLine
from chmail.client.tui.screens.alarms import AlarmsScreen
from chmail.client.tui.screens.operator import OperatorScreen
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.message_list import ch_login
from chmail.errors import ChmailError

if TYPE_CHECKING:
    from chmail.client.tui.screens.main import MainScreen

NO_HEADERS = (
    "This mail has no chat link (no X-CH headers): its sender does not use chmail, "
    "so you can only answer by mail."
)
NO_SERVER = "Chat is off: this account has no CH server in its config ([accounts.ch] server)."


def chat_line(msg: Message, presence: set[str], chat_on: bool) -> str:
    """The reader's one line about chatting with this mail's sender."""
    if not msg.has_ch:
        return "No chat link in this mail."
    login = ch_login(msg)
    if not chat_on:
        return f"Chat link from {login} (chat is off for this account)."
    if login in presence:
        return f"◉ {login} is online now — press c to chat."
    return f"◌ Chat link from {login} (not online now; c leaves an alarm)."


def pane(screen: MainScreen) -> ChatPane | None:
    found = screen.query(ChatPane)
    return found.first() if found else None


def open_pane(screen: MainScreen, session: str, peer: str, subject: str, state: str) -> ChatPane:
    current = pane(screen)
    if current is not None and current.session == session:
        if peer and peer != "…":
            current.peer = peer  # a campaign chat is answered by an operator, not the mall
        current.set_state(state)
        return current
    if current is not None:
        current.remove()
    me = screen.capp.chat.login() if screen.capp.chat else ""
    new = ChatPane(session, peer, subject, me=me)
    new.state = state
    screen.query_one("#main").mount(new)
    load_history(screen, session)
    return new


def load_history(screen: MainScreen, session: str) -> None:
    async def run() -> None:
        chat = screen.capp.chat
        if chat is None:
            return
        try:
            lines = await chat.history(session)
        except ChmailError:
            return
        p = pane(screen)
        if p is not None and p.session == session and lines:
            known = {ln.cid for ln in lines}
            p.set_history([*lines, *(ln for ln in p.lines if ln.cid not in known)])

    screen.run_worker(run(), group="chat-history")


def escalate(screen: MainScreen, msg: Message) -> None:
    chat = screen.capp.chat
    if not msg.has_ch:
        screen.status.fail(NO_HEADERS)
        return
    if chat is None:
        screen.status.fail(NO_SERVER)
        return
    login = ch_login(msg)
    screen.status.say(f"Calling {login}…")

    async def run() -> None:
        try:
            session = await chat.escalate(msg)
        except ChmailError as exc:
            screen.status.fail(f"Cannot chat: {exc}")
            return
        open_pane(screen, session, login, msg.subject, f"ringing {login}…")
        screen.status.say(f"Ringing {login}. The chat opens when they accept.")

    screen.run_worker(run(), group="chat-escalate", exclusive=True)


def add_line(screen: MainScreen, line: ChatLine) -> None:
    p = pane(screen)
    if p is not None and p.session == line.session:
        p.add_line(line)
        if not line.mine and screen.capp.chat is not None:
            chat = screen.capp.chat

            async def read() -> None:
                with contextlib.suppress(ChmailError):
                    await chat.mark_read(line.session, line.seq)

            screen.run_worker(read(), group="chat-read")
    elif not line.mine:
        screen.status.say(f"New chat message from {line.sender}.")


def say(screen: MainScreen, session: str, text: str) -> None:
    chat = screen.capp.chat
    if chat is None:
        return

    async def run() -> None:
        try:
            await chat.say(session, text)
        except ChmailError as exc:
            screen.status.fail(f"Not sent: {exc}")

    screen.run_worker(run(), group="chat-say")


def typing(screen: MainScreen, session: str) -> None:
    chat = screen.capp.chat
    if chat is None:
        return

    async def run() -> None:
        with contextlib.suppress(ChmailError):
            await chat.typing(session)

    screen.run_worker(run(), group="chat-typing")


def leave(screen: MainScreen, session: str) -> None:
    chat = screen.capp.chat
    p = pane(screen)
    if p is not None:
        p.remove()
    screen.msg_list.focus()
    if chat is None:
        return

    async def run() -> None:
        with contextlib.suppress(ChmailError):
            await chat.leave(session)

    screen.run_worker(run(), group="chat-leave")
    screen.status.say("Chat closed. Its history stays on the server; ctrl+t files it.")


def file_transcript(screen: MainScreen, session: str) -> None:
    chat = screen.capp.chat
    if chat is None:
        return

    async def run() -> None:
        try:
            where = await chat.transcript(session)
        except ChmailError as exc:
            screen.status.fail(f"Transcript not filed: {exc}")
            return
        screen.status.say(f"Transcript filed into {where}.")
        screen.load_folders()

    screen.run_worker(run(), group="chat-file")


def show_alarms(screen: MainScreen) -> None:
    app = screen.capp

    def done(session: str | None) -> None:
        if session:
            open_pane(screen, session, "…", "call back", "ringing…")

    app.push_screen(AlarmsScreen(app.chat, list(app.alarms)), done)


def show_queue(screen: MainScreen) -> None:
    app = screen.capp

    def done(session: str | None) -> None:
        if session:
            open_pane(screen, session, "customer", "campaign chat", "connected")

    app.push_screen(OperatorScreen(app.chat), done)
