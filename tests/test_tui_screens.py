"""The TUI's own screens over a real cache file: a big folder, threads, help and the keymap,
first-run setup, and the bench smoke run."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from chmail import config as cfgmod
from chmail.client.cache import Cache
from chmail.client.tui.api import ChatLine, Ring
from chmail.client.tui.app import ChmailApp
from chmail.client.tui.engine_mail import AccountEngine, CacheMail
from chmail.client.tui.screens.help import HelpScreen
from chmail.client.tui.screens.ring import RingScreen
from chmail.client.tui.screens.setup import SetupScreen, build_config
from chmail.client.tui.setup_app import SetupApp
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.message_list import MessageList
from chmail.client.tui.widgets.status import StatusBar
from chmail.config import AccountConfig, Config, UiConfig
from chmail.errors import ConfigError
from tests.tui_env import screen_text, wait_for
from tests.tui_helpers import TERMINAL_CONTROLS, fill, make_cache, new_message

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def cached_app(cache: Cache, **ui: object) -> AsyncIterator[tuple[ChmailApp, Pilot[None]]]:
    acc = AccountConfig(name="alice", email="alice@example.org")
    config = Config(accounts=(acc,), ui=UiConfig(**ui))
    app = ChmailApp(config, CacheMail(cache, {"alice": AccountEngine(acc)}), None, sync=False)
    async with app.run_test(size=(120, 36)) as pilot:
        yield app, pilot


async def test_big_folder_opens_and_scrolls(tmp_path: Path) -> None:
    """A 20,000-message folder shows its newest rows at once; G reaches the oldest."""
    cache = await make_cache(tmp_path / "c.sqlite3", 20_000)
    try:
        async with cached_app(cache, threaded=False) as (app, pilot):
            ml = app.screen.query_one(MessageList)
            await wait_for(pilot, lambda: ml.total == 20_000 and ml.current is not None)
            assert ml.current is not None
            assert ml.current.subject.endswith("#19999")
            assert ml.border_subtitle == "20,000 messages"
            await pilot.press("G")
            await wait_for(pilot, lambda: ml.cursor == 19_999 and ml.current is not None)
            assert ml.current is not None
            assert ml.current.subject.endswith("#0")
            await pilot.press("k", "k")
            assert ml.cursor == 19_997
    finally:
        await cache.close()


async def test_threaded_view_indents_replies(tmp_path: Path) -> None:
    """t shows a reply under the mail it answers, indented."""
    cache = await Cache.open(tmp_path / "c.sqlite3")
    try:
        f = await cache.upsert_folder("alice", "INBOX", special_use="inbox")
        msgs = [new_message(i, thread_every=3) for i in range(6)]
        await cache.add_messages(f.id, msgs, uidvalidity=1)
        async with cached_app(cache, threaded=False) as (app, pilot):
            ml = app.screen.query_one(MessageList)
            await wait_for(pilot, lambda: ml.total == 6 and ml.current is not None)
            await pilot.press("t")
            await wait_for(pilot, lambda: ml.threaded and ml.row(1) is not None)
            first, second = ml.row(0), ml.row(1)
            assert first is not None
            assert second is not None
            assert second.in_reply_to == first.message_id
            assert ml.source is not None
            assert ml.source.depth_of(second) == 1
            assert "└" in "".join(s.text for s in ml.render_line(1))
    finally:
        await cache.close()


async def test_help_lists_every_key_with_remaps(tmp_path: Path) -> None:
    """? lists bindings by id; a [ui].keys remap is both shown and in force."""
    cache = await make_cache(tmp_path / "c.sqlite3", 5)
    try:
        async with cached_app(cache, keys={"mail.chat": "ctrl+k"}) as (app, pilot):
            ml = app.screen.query_one(MessageList)
            await wait_for(pilot, lambda: ml.current is not None)
            await pilot.press("ctrl+k")
            status = app.screen.query_one(StatusBar)
            await wait_for(pilot, lambda: "no chat link" in status.error)
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            table = app.screen.query_one(DataTable)
            rows = [table.get_row_at(i) for i in range(table.row_count)]
            by_id = {r[3]: r for r in rows}
            assert by_id["mail.chat"][1] == "ctrl+k"
            assert by_id["app.help"][1] == "?"
            assert {"mail.compose", "compose.send", "ring.accept", "alarms.call-back"} <= set(by_id)
    finally:
        await cache.close()


def test_unknown_key_id_is_refused() -> None:
    """A typo in [ui].keys names the unknown id instead of doing nothing."""
    from chmail.client.tui.keymap import check_keymap

    with pytest.raises(ConfigError, match=r"mail\.chta"):
        check_keymap({"mail.chta": "x"}, {"mail.chat"})


async def test_setup_screen_writes_a_config(tmp_path: Path) -> None:
    """First run: the setup form writes a config chmail can load."""
    path = tmp_path / "cfg" / "config.toml"
    app = SetupApp(path)
    async with app.run_test(size=(100, 50)) as pilot:
        screen = app.screen
        assert isinstance(screen, SetupScreen)
        assert "chmail demo" in str(screen.query_one("#setup-welcome").render())
        for key, value in {
            "email": "ann@example.org",
            "imap": "imap.example.org:993",
            "smtp": "smtp.example.org:465",
            "ch_server": "ch.example.org:7380",
        }.items():
            screen.query_one(f"#setup-{key}", Input).value = value
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: path.exists())
    config = cfgmod.load(path)
    assert config.accounts[0].email == "ann@example.org"
    assert config.accounts[0].imap.port == 993
    assert config.accounts[0].ch.login == "ann"
    assert "password" not in tomllib.loads(path.read_text()).get("accounts", [{}])[0]["imap"]


def test_setup_asks_for_what_is_missing() -> None:
    """The setup form says in words what to fix."""
    with pytest.raises(ConfigError, match="e-mail address"):
        build_config({"email": "nope"}, "imap")
    with pytest.raises(ConfigError, match="IMAP server"):
        build_config({"email": "a@b.c"}, "imap")


async def test_more_mail_arrives_in_a_big_folder(tmp_path: Path) -> None:
    """New mail added to the cache shows after a refresh, keeping the list usable."""
    cache = await make_cache(tmp_path / "c.sqlite3", 300)
    try:
        async with cached_app(cache, threaded=False) as (app, pilot):
            ml = app.screen.query_one(MessageList)
            await wait_for(pilot, lambda: ml.total == 300)
            f = (await cache.folders("alice"))[0]
            await fill(cache, "alice", f.name, 301)
            main = app.main
            assert main is not None
            main.refresh_rows()
            await wait_for(pilot, lambda: ml.total == 301, f"301 rows (shows {ml.total})")
    finally:
        await cache.close()


def test_bench_smoke() -> None:
    """bench/tui.py runs on a small folder and ends with its JSON line."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tui.py"), "--messages", "1500"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    import json

    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["messages"] == 1500
    assert {"first_paint_ms", "scroll_1000_ms", "rss_mib"} <= set(last)


class _ChatHost(App[None]):
    def compose(self) -> ComposeResult:
        yield ChatPane("s1", "pe\x1b[5mer", "Sub[b]ject\x07", me="me")


async def test_chat_and_ring_show_outside_text_as_text() -> None:
    """A peer's name and chat line, and a ring's caller, subject and context, carrying
    escape sequences and markup, are shown literally: controls as visible stand-ins,
    brackets as brackets (never a style or a clickable action)."""
    app = _ChatHost()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ChatPane)
        pane.add_line(ChatLine("s1", 1, "pe\x1b[5mer", "hi \x1b[2J[red]x[/red]", 0.0))
        await wait_for(pilot, lambda: "[red]x[/red]" in screen_text(app), "the chat line")
        text = screen_text(app)
        assert "hi ␛[2J[red]x[/red]" in text
        assert "Chat with pe␛[5mer  — Sub[b]ject␇" in text
        assert not TERMINAL_CONTROLS & set(text)
        ring = Ring("s2", "mal\x9blory", "[@click=app.quit]win[/]", context="a\x1b]0;t\x07b")
        app.push_screen(RingScreen(ring))
        await wait_for(pilot, lambda: "wants to chat" in screen_text(app), "the ring")
        text = screen_text(app)
        assert "mal\ufffdlory wants to chat about:" in text
        assert "“[@click=app.quit]win[/]”" in text
        assert "a␛]0;t␇b" in text
        assert not TERMINAL_CONTROLS & set(text)
