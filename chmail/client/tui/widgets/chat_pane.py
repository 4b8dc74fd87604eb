"""The chat pane beside a mail: history, a typing indicator, read state, an input line."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.widgets import Input, Static

from chmail.client.safe_text import block, one_line
from chmail.client.tui.api import ChatLine

TYPING_SHOWN_S = 4.0


class ChatPane(Vertical):
    """One chat session. Posts ``Say`` / ``Typing`` / ``Leave`` for the screen to act on."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave", "Close chat", id="chat.close"),
        Binding("ctrl+t", "file_transcript", "File transcript", id="chat.file"),
        # an operator's keys on a campaign chat (screens/operator_keys.py)
        Binding("ctrl+o", "canned", "Canned reply", id="chat.canned"),
        *(
            Binding(f"f{n}", f"canned({n})", f"Canned reply {n}", show=False, id=f"chat.canned-{n}")
            for n in range(1, 10)
        ),
        Binding("ctrl+g", "tag", "Tag interests", id="chat.tag"),
    ]

    class Say(TMessage):
        def __init__(self, session: str, text: str) -> None:
            super().__init__()
            self.session = session
            self.text = text

    class Typing(TMessage):
        def __init__(self, session: str) -> None:
            super().__init__()
            self.session = session

    class Leave(TMessage):
        def __init__(self, session: str) -> None:
            super().__init__()
            self.session = session

    class FileTranscript(TMessage):
        def __init__(self, session: str) -> None:
            super().__init__()
            self.session = session

    class Canned(TMessage):
        """Say a canned reply: number ``n`` at once, or pick one (``n`` = 0)."""

        def __init__(self, session: str, n: int) -> None:
            super().__init__()
            self.session = session
            self.n = n

    class Tag(TMessage):
        def __init__(self, session: str, member: str) -> None:
            super().__init__()
            self.session = session
            self.member = member

    def __init__(self, session: str, peer: str, subject: str, *, me: str) -> None:
        super().__init__(id="chat-pane")
        self.session = session
        self.peer = peer
        self.subject = subject
        self.me = me
        self.lines: list[ChatLine] = []
        self.peer_read = 0
        self.state = "ringing"
        self._typing_until = 0.0
        self._last_typing_sent = 0.0

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="chat-title")
        yield VerticalScroll(Static(id="chat-log"), id="chat-scroll")
        yield Static("", id="chat-typing")
        yield Input(placeholder="Type a message, Enter sends", id="chat-input")

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)
        self.query_one("#chat-input", Input).focus()

    def _title(self) -> Text:
        text = Text(f"Chat with {one_line(self.peer)}", style="bold")
        text.append(f"  — {one_line(self.subject)}\n")
        text.append(self.state, style="green" if self.state == "connected" else "yellow")
        return text

    def set_state(self, state: str) -> None:
        self.state = state
        self.query_one("#chat-title", Static).update(self._title())

    def add_line(self, line: ChatLine) -> None:
        for i, old in enumerate(self.lines):
            if (line.cid and old.cid == line.cid) or (old.seq == line.seq > 0):
                self.lines[i] = line
                self._render_log()
                return
        self.lines.append(line)
        if not line.mine:
            self._typing_until = 0.0
        self._render_log()

    def set_history(self, lines: list[ChatLine]) -> None:
        self.lines = sorted(lines, key=lambda c: (c.seq == 0, c.seq, c.ts))
        self._render_log()

    def show_typing(self, who: str) -> None:
        if who != self.me:
            self._typing_until = time.monotonic() + TYPING_SHOWN_S
            self._tick()

    def show_read(self, seq: int) -> None:
        self.peer_read = max(self.peer_read, seq)
        self._render_log()

    def _tick(self) -> None:
        typing = time.monotonic() < self._typing_until
        said = f"{one_line(self.peer)} is typing…" if typing else ""
        self.query_one("#chat-typing", Static).update(Text(said))

    def _render_log(self) -> None:
        text = Text()
        for line in self.lines:
            stamp = time.strftime("%H:%M", time.localtime(line.ts))
            who = "me" if line.mine else one_line(line.sender)
            text.append(f"{stamp} ", style="dim")
            text.append(f"{who}: ", style="bold cyan" if line.mine else "bold magenta")
            text.append(block(line.text) + "\n")
        mine = [ln for ln in self.lines if ln.mine]
        if mine and self.peer_read >= mine[-1].seq > 0:
            text.append(f"✓ read by {one_line(self.peer)}\n", style="dim green")
        self.query_one("#chat-log", Static).update(text)
        self.query_one("#chat-scroll", VerticalScroll).scroll_end(animate=False)

    @on(Input.Submitted, "#chat-input")
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if text:
            event.input.value = ""
            self.post_message(self.Say(self.session, text))

    @on(Input.Changed, "#chat-input")
    def _typing(self, event: Input.Changed) -> None:
        event.stop()
        now = time.monotonic()
        if event.value and now - self._last_typing_sent > 2.0:
            self._last_typing_sent = now
            self.post_message(self.Typing(self.session))

    def action_leave(self) -> None:
        self.post_message(self.Leave(self.session))

    def action_file_transcript(self) -> None:
        self.post_message(self.FileTranscript(self.session))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The operator's keys only in a campaign chat (one the shop sent a brief for)."""
        if action in ("canned", "tag"):
            chat = getattr(self.app, "chat", None)
            return bool(chat is not None and chat.campaign_chat(self.session))
        return True

    def action_canned(self, n: int = 0) -> None:
        self.post_message(self.Canned(self.session, n))

    def action_tag(self) -> None:
        self.post_message(self.Tag(self.session, self.peer))
