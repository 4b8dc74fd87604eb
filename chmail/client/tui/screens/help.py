"""``?``: every key, grouped by where it works, with its Binding id for ``[ui].keys``."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from chmail.client.tui.keymap import KeyRow


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close help", id="help.close"),
    ]

    def __init__(self, rows: list[KeyRow]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        yield Static(
            "Keys — remap any of them in config.toml under [ui.keys] by id, "
            'e.g. "mail.chat" = "ctrl+k"',
            id="help-title",
        )
        yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("where", "key", "does", "id")
        for r in self.rows:
            table.add_row(r.section, r.keys, r.description, r.id)
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
