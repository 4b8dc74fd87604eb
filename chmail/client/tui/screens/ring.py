"""An incoming ring: pops up over whatever screen is showing, with a bell (S111)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from chmail.client.safe_text import block, one_line
from chmail.client.tui.api import Ring


class RingScreen(ModalScreen[bool | None]):
    """Dismisses True to accept, False to decline, None to answer later (it keeps ringing
    and stays in the operator's queue, Q)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,a", "accept", "Accept", id="ring.accept"),
        Binding("n,d", "decline", "Decline", id="ring.decline"),
        Binding("l,escape", "later", "Later", id="ring.later"),
    ]

    def __init__(self, ring: Ring) -> None:
        super().__init__()
        self.ring = ring

    def compose(self) -> ComposeResult:
        with Vertical(id="ring"):
            yield Static("🔔 Incoming chat", id="ring-title")
            # (Text, not a str: a str is read as markup, and these come from outside)
            caller = one_line(self.ring.caller)
            yield Static(Text(f"{caller} wants to chat about:"), id="ring-caller")
            subject = one_line(self.ring.subject or "(no subject)")
            yield Static(Text(f"“{subject}”"), id="ring-subject")
            yield Static(Text(block(self.ring.context)), id="ring-context")
            with Horizontal(id="ring-buttons"):
                yield Button("Accept (y)", id="accept", variant="success")
                yield Button("Decline (n)", id="decline", variant="error")
            yield Static("l or esc: later (it keeps ringing; Q lists it)", id="ring-hint")

    def set_context(self, context: str) -> None:
        """What the mall's brief says (campaign, product), once it arrives."""
        if context and self.is_attached:
            self.query_one("#ring-context", Static).update(Text(block(context)))

    def on_mount(self) -> None:
        self.query_one("#accept", Button).focus()

    @on(Button.Pressed, "#accept")
    def action_accept(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#decline")
    def action_decline(self) -> None:
        self.dismiss(False)

    def action_later(self) -> None:
        self.dismiss(None)
