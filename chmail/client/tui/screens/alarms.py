"""Missed rings and alarms (S117), with call-back."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from chmail.client.safe_text import one_line
from chmail.client.tui.api import AlarmItem, ChatApi
from chmail.errors import ChmailError


class AlarmsScreen(Screen[str | None]):
    """Lists alarms; Enter calls back and dismisses with the new session id."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "call_back", "Call back", id="alarms.call-back"),
        Binding("escape,q", "close", "Back", id="alarms.close"),
        Binding("ctrl+r", "refresh", "Refresh", id="alarms.refresh"),
    ]

    def __init__(self, chat: ChatApi | None, known: list[AlarmItem]) -> None:
        super().__init__()
        self.chat = chat
        self.items: list[AlarmItem] = list(known)

    def compose(self) -> ComposeResult:
        yield Static("Alarms — missed chats", id="alarms-title")
        yield DataTable(id="alarms-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="alarms-status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("when", "who", "about", "what")
        self._fill()
        self.action_refresh()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        unique = {a.id: a for a in self.items}
        self.items = list(unique.values())
        for a in sorted(self.items, key=lambda a: a.ts, reverse=True):
            when = time.strftime("%d %b %H:%M", time.localtime(a.ts))
            # (Text cells: a str cell is read as markup, and these come from outside)
            who, about, what = (Text(one_line(s)) for s in (a.caller, a.subject, a.kind))
            table.add_row(when, who, about if a.subject else "(no subject)", what, key=a.id)
        note = "" if self.items else "No alarms. Missed chats will be listed here."
        self._say(note)

    def _say(self, note: str) -> None:
        self.query_one("#alarms-status", Static).update(Text(one_line(note)))

    @work(group="alarms", exclusive=True)
    async def action_refresh(self) -> None:
        if self.chat is None:
            return
        try:
            fresh = await self.chat.alarms()
        except ChmailError as exc:
            self._say(f"Could not load alarms: {exc}")
            return
        ids = {a.id for a in fresh}
        self.items = fresh + [a for a in self.items if a.id not in ids]
        self._fill()

    @work(group="alarms-call", exclusive=True)
    async def action_call_back(self) -> None:
        table = self.query_one(DataTable)
        if self.chat is None or not self.items:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        alarm = next((a for a in self.items if a.id == key), None)
        if alarm is None:
            return
        try:
            session = await self.chat.call_back(alarm)
        except ChmailError as exc:
            self._say(f"Cannot call back: {exc}")
            return
        self.dismiss(session)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a row (the table takes the key first)."""
        event.stop()
        self.action_call_back()

    def action_close(self) -> None:
        self.dismiss(None)
