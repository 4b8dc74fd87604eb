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
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable

from chmail.client.cache import Cache
from chmail.client.tui.api import Ring
from chmail.client.tui.app import ChmailApp
from chmail.client.tui.engine_mail import AccountEngine, CacheMail
from chmail.client.tui.screens.help import HelpScreen
from chmail.client.tui.screens.main import MainScreen
from chmail.client.tui.screens.ring import RingScreen
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


async def _until(pilot: Pilot[Any], cond: Callable[[], bool]) -> None:
    for _ in range(1000):  # 10 s at most
        if cond():
            return
        await pilot.pause(0.01)
    raise AssertionError("the screen never got ready for its snapshot")


def _listed(app: App[Any]) -> bool:
    found = app.screen.query(MessageList)
    return bool(found) and found.first().total > 0 and found.first().row(0) is not None


def _when_listed(*keys: str, ready: Callable[[App[Any]], bool] = _listed) -> Callable[..., Any]:
    async def run(pilot: Pilot[Any]) -> None:
        await _until(pilot, lambda: _listed(pilot.app))
        await pilot.press(*keys)
        await _until(pilot, lambda: ready(pilot.app))
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    return run


def _mail_shown(app: App[Any]) -> bool:
    main = app.screen
    return isinstance(main, MainScreen) and main.view is not None


def _help_shown(app: App[Any]) -> bool:
    return isinstance(app.screen, HelpScreen) and app.screen.query_one(DataTable).row_count > 0


def test_main_screen_with_a_mail_open(snap_compare: Any, snap_app: ChmailApp) -> None:
    """The main screen: folders, the list, the reader showing the second mail."""
    assert snap_compare(
        snap_app, terminal_size=SIZE, run_before=_when_listed("j", "enter", ready=_mail_shown)
    )


def test_help_lists_keys(snap_compare: Any, snap_app: ChmailApp) -> None:
    """? shows every key with its binding id."""
    assert snap_compare(
        snap_app, terminal_size=SIZE, run_before=_when_listed("question_mark", ready=_help_shown)
    )


def test_ring_popup(snap_compare: Any, snap_app: ChmailApp) -> None:
    """An incoming ring over the main screen names the caller and the mail."""
    listed = _when_listed()

    async def run(pilot: Pilot[Any]) -> None:
        await listed(pilot)
        snap_app.on_ring(Ring("7", "bob", "Lunch on Friday?"))
        await _until(pilot, lambda: isinstance(snap_app.screen, RingScreen))
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    assert snap_compare(snap_app, terminal_size=SIZE, run_before=run)
