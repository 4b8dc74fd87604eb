"""The live response board as a Textual app: one row per campaign, redrawn on events."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header

from shop_publicity import board as boardmod
from shop_publicity.store import Store

COLUMNS = (
    ("campaign", "campaign"),
    ("sent", "sent"),
    ("failed", "failed"),
    ("unsubscribed", "unsub"),
    ("chats_asked", "asked"),
    ("chats_answered", "answered"),
    ("waiting_now", "waiting"),
    ("median_answer_s", "median s"),
    ("response_rate", "resp %"),
)


def cells(cid: int, figures: dict[str, object]) -> list[str]:
    out = []
    for key, _ in COLUMNS:
        v = cid if key == "campaign" else figures[key]
        if key == "response_rate" and isinstance(v, float):
            out.append(f"{100 * v:.1f}")
        elif v is None:
            out.append("-")
        else:
            out.append(str(v))
    return out


class BoardApp(App[None]):
    """Per-campaign figures, updated from the event log as it grows."""

    TITLE = "chmail-shop board"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit", id="quit")]

    def __init__(self, store: Store, campaign: int | None = None, interval: float = 0.25):
        super().__init__()
        self.store = store
        self.campaign = campaign
        self.interval = interval
        self.board = boardmod.Board()
        self.stop = asyncio.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="board", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.run_worker(self._follow(), exclusive=True)

    async def _follow(self) -> None:
        await boardmod.follow(
            self.store, self.board, self.redraw, self.stop, self.campaign, self.interval
        )

    def redraw(self, board: boardmod.Board) -> None:
        table = self.query_one(DataTable)
        for cid, tally in sorted(board.tallies.items()):
            row = cells(cid, tally.figures())
            key = str(cid)
            if key in table.rows:
                for (col, _), value in zip(COLUMNS, row, strict=True):
                    table.update_cell(key, col, value)
            else:
                table.add_row(*row, key=key)

    async def action_quit(self) -> None:
        self.stop.set()
        self.exit()


async def run_board(store: Store, campaign: int | None) -> None:
    await BoardApp(store, campaign).run_async()
