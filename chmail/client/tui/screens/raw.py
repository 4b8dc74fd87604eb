"""The raw source of a mail, as it arrived (control characters shown, not obeyed)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from chmail.client.safe_text import block


class RawScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back", id="raw.close"),
    ]

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="raw"):
            yield Static(Text(block(self.raw.decode("utf-8", "replace"))))
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#raw").focus()

    def action_close(self) -> None:
        self.dismiss(None)
