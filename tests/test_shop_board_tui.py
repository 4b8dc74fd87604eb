"""The Textual board shows the event log's figures and follows new events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import DataTable

from shop_publicity import models as m
from shop_publicity.store import Store
from shop_publicity.tui.board import BoardApp


async def test_board_tui_follows_events(tmp_path: Path) -> None:
    """Rows appear per campaign and their cells change as events are recorded."""
    store = await Store.open(tmp_path / "data")
    try:
        for mid in (1, 2, 3):
            await store.add_event(7, m.EV_SENT, mid)
        app = BoardApp(store, interval=0.01)
        async with app.run_test() as pilot:
            table = app.query_one(DataTable)

            async def until(check: object) -> None:
                async def loop() -> None:
                    while not check():  # type: ignore[operator]
                        await pilot.pause()

                await asyncio.wait_for(loop(), 10)

            await until(lambda: "7" in table.rows)
            assert table.get_cell("7", "sent") == "3"
            await store.add_event(7, m.EV_CHAT_ASKED, 1)
            await until(lambda: table.get_cell("7", "chats_asked") == "1")
            assert table.get_cell("7", "response_rate") == "33.3"
            await pilot.press("q")
    finally:
        await store.close()
