"""A few snapshots of the main screens (pytest-textual-snapshot), over a real cache file.

Deterministic: fixed 2020 dates (shown as dates, never "today"), no network, fixed size.
Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from chmail.client.cache import Cache
from chmail.client.tui.api import Ring
from chmail.client.tui.app import ChmailApp
from chmail.client.tui.engine_mail import AccountEngine, CacheMail
from chmail.client.tui.widgets.message_list import MessageList
from chmail.config import AccountConfig, Config, UiConfig
from tests.tui_helpers import make_cache

SIZE = (110, 32)


@pytest.fixture
def snap_app(tmp_path: Path) -> Iterator[ChmailApp]:
    """The app over a cache of 60 messages whose bodies are cached (no server needed)."""
    cache: Cache = asyncio.run(_cache(tmp_path / "cache.sqlite3"))
    acc = AccountConfig(name="alice", email="alice@example.org")
    config = Config(accounts=(acc,), ui=UiConfig(threaded=False, bell=False))
    app = ChmailApp(config, CacheMail(cache, {"alice": AccountEngine(acc)}), None, sync=False)
    yield app
    asyncio.run(cache.close())


async def _cache(path: Path) -> Cache:
    from tests.tui_helpers import NAMES, raw_mail

    cache = await make_cache(path, 60)
    for msg in await cache.page((await cache.folders("alice"))[0].id, 0, 60):
        i = msg.uid - 1
        body = f"Hello Alice,\n\nThis is message {i}.\n\nRegards\n"
        raw = raw_mail(NAMES[i % len(NAMES)], "Alice <alice@example.org>", msg.subject, body,
                       msg.message_id)  # fmt: skip
        await cache.set_body(msg.pk, raw, "")
    return cache


def _when_listed(*keys: str) -> Callable[[Pilot[Any]], Any]:
    async def run(pilot: Pilot[Any]) -> None:
        app = pilot.app
        for _ in range(400):
            found = app.screen.query(MessageList)
            if found and found.first().total and found.first().row(0) is not None:
                break
            await pilot.pause(0.01)
        await pilot.press(*keys)
        await pilot.pause(0.2)
        await pilot.wait_for_scheduled_animations()

    return run


def test_main_screen_with_a_mail_open(snap_compare: Any, snap_app: ChmailApp) -> None:
    """The main screen: folders, the list, the reader showing the second mail."""
    assert snap_compare(snap_app, terminal_size=SIZE, run_before=_when_listed("j", "enter"))


def test_help_lists_keys(snap_compare: Any, snap_app: ChmailApp) -> None:
    """? shows every key with its binding id."""
    assert snap_compare(snap_app, terminal_size=SIZE, run_before=_when_listed("question_mark"))


def test_ring_popup(snap_compare: Any, snap_app: ChmailApp) -> None:
    """An incoming ring over the main screen names the caller and the mail."""
    listed = _when_listed()

    async def run(pilot: Pilot[Any]) -> None:
        await listed(pilot)
        snap_app.on_ring(Ring("7", "bob", "Lunch on Friday?"))
        await pilot.pause(0.2)

    assert snap_compare(snap_app, terminal_size=SIZE, run_before=run)
