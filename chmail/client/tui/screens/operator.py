"""The operator's view: campaign customers waiting to chat, with campaign and product."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from chmail.client.safe_text import one_line
from chmail.client.tui.api import ChatApi, QueueItem
from chmail.errors import ChmailError

REFRESH_S = 3.0


class OperatorScreen(Screen[str | None]):
    """The chat queue; Enter takes the chat and dismisses with its session id."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "take", "Take chat", id="queue.take"),
        Binding("d", "dial", "Call a member", id="queue.dial"),
        Binding("escape,q", "close", "Back", id="queue.close"),
    ]

    def __init__(self, chat: ChatApi | None) -> None:
        super().__init__()
        self.chat = chat
        self.items: list[QueueItem] = []
        self.note = ""  # what the last call of a member did (kept across refreshes)

    def compose(self) -> ComposeResult:
        yield Static("Chat queue — campaign customers waiting", id="queue-title")
        yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(
            "customer", "campaign", "product", "waiting", "taken by"
        )
        self.refresh_queue()
        self.set_interval(REFRESH_S, self.refresh_queue)

    @work(group="queue", exclusive=True)
    async def refresh_queue(self) -> None:
        status = self.query_one("#queue-status", Static)
        if self.chat is None:
            status.update("No CH server is configured for this account, so there is no queue.")
            return
        try:
            self.items = await self.chat.queue()
        except ChmailError as exc:
            status.update(Text(one_line(f"Cannot read the queue: {exc}")))
            return
        table = self.query_one(DataTable)
        table.clear()
        for q in self.items:
            wait = f"{int(q.waiting_s) // 60}m{int(q.waiting_s) % 60:02d}s"
            cells = (q.member, q.campaign, q.product, wait, q.taken_by or "—")
            # (Text cells: a str cell is read as markup, and these come from outside)
            table.add_row(*(Text(one_line(c)) for c in cells), key=q.session)
        status.update(Text(one_line(self.note or ("" if self.items else "Nobody is waiting."))))

    @work(group="queue-take", exclusive=True)
    async def action_take(self) -> None:
        if self.chat is None or not self.items:
            return
        table = self.query_one(DataTable)
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if key is None:
            return
        try:
            await self.chat.take(key)
        except ChmailError as exc:
            self.query_one("#queue-status", Static).update(
                Text(one_line(f"Cannot take that chat: {exc}"))
            )
            return
        self.dismiss(key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a row (the table takes the key first)."""
        event.stop()
        self.action_take()

    def action_dial(self) -> None:
        """S209: call a member about a campaign (an offline one gets an alarm)."""
        from chmail.client.tui.screens.operator_keys import DialScreen

        chat = self.chat
        if chat is None:
            return

        def chosen(who: tuple[str, int] | None) -> None:
            if who is not None:
                self.run_worker(self._dial(chat, *who), group="queue-dial", exclusive=True)

        self.app.push_screen(DialScreen(chat.last_campaign()), chosen)

    async def _dial(self, chat: ChatApi, member: str, campaign: int) -> None:
        status = self.query_one("#queue-status", Static)
        try:
            said = await chat.dial(member, campaign)
        except ChmailError as exc:
            self.note = f"Cannot call {member}: {exc}"
        else:
            self.note = said
        status.update(Text(one_line(self.note)))

    def action_close(self) -> None:
        self.dismiss(None)
