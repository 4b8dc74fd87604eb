"""TUI benchmark: first paint of a large cached folder, moving 1,000 rows, memory.

    .venv/bin/python bench/tui.py [--messages 100000] [--keep DIR]

Fills a real cache (SQLite file) with N messages in one folder (not timed), then runs the
real ChmailApp headless (Textual ``run_test``, 120x40) over it:

* ``first_paint_ms``: from starting the app to the first rows of the folder on screen
  (app start-up, COUNT, first page, render). Goal: <= 300 ms for 100,000 messages.
* ``open_folder_ms``: switching to the folder again (new source, COUNT, first page, render).
* ``open_threaded_ms``: the same in the threaded view (threads of the newest rows looked up).
* ``scroll_1000_ms``: 1,000 one-row cursor moves (what 1,000 down-key presses do), each
  handled on the event loop, until row 1,000 is loaded and drawn (pages are read in
  workers as rows come into view).
* ``rss_mib``: resident memory of the process afterwards.

The last line is one JSON object with those figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual.strip import Strip

from chmail.client.cache import Cache
from chmail.client.tui.app import ChmailApp
from chmail.client.tui.engine_mail import AccountEngine, CacheMail
from chmail.client.tui.widgets.folders import FolderRef
from chmail.client.tui.widgets.message_list import MessageList
from chmail.config import AccountConfig, Config, UiConfig
from tests.tui_helpers import make_cache


class Probe:
    """Notes when the message list draws a row that is loaded (what the user sees)."""

    def __init__(self) -> None:
        self.drawn: dict[int, float] = {}
        original = MessageList.render_line

        def render_line(ml: MessageList, y: int) -> Strip:
            index = ml.scroll_offset.y + y
            if ml.total and index not in self.drawn and ml.row(index) is not None:
                self.drawn[index] = time.perf_counter()
            return original(ml, y)

        MessageList.render_line = render_line  # type: ignore[method-assign]

    async def until_drawn(self, index: int, ml: MessageList | None = None) -> float:
        end = time.perf_counter() + 60
        polls = 0
        while index not in self.drawn:
            if time.perf_counter() > end:
                raise TimeoutError(f"row {index} was not drawn within 60 s")
            await asyncio.sleep(0.005)
            polls += 1
            if ml is not None and polls % 40 == 0:
                ml.refresh()  # never wait on a refresh that was coalesced away
        return self.drawn[index]


async def bench(n: int, path: Path) -> dict[str, float | int]:
    if not path.exists():
        t = time.perf_counter()
        cache = await make_cache(path, n)
        await cache.close()
        print(f"seeded {n} messages in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    probe = Probe()
    cache = await Cache.open(path)
    acc = AccountConfig(name="alice", email="alice@example.org")
    config = Config(accounts=(acc,), ui=UiConfig(threaded=False))
    mail = CacheMail(cache, {"alice": AccountEngine(acc)})
    t0 = time.perf_counter()
    app = ChmailApp(config, mail, None, sync=False)
    async with app.run_test(size=(120, 40)) as pilot:
        first_paint = (await probe.until_drawn(0) - t0) * 1000
        ml = app.screen.query_one(MessageList)
        main = app.main
        assert main is not None

        probe.drawn.clear()
        t1 = time.perf_counter()
        main.open_folder(FolderRef("alice", "INBOX"))
        open_folder = (await probe.until_drawn(0, ml) - t1) * 1000

        probe.drawn.clear()
        t3 = time.perf_counter()
        main.threaded = True
        main.open_folder(FolderRef("alice", "INBOX"))
        open_threaded = (await probe.until_drawn(0, ml) - t3) * 1000
        main.threaded = False
        main.open_folder(FolderRef("alice", "INBOX"))
        await pilot.pause()

        # 1,000 single-row moves, as fast as keys can arrive: each handled on the loop
        # (cursor, scrolling, page loads in workers), then the last row must be drawn.
        ml.focus()
        t2 = time.perf_counter()
        for _ in range(1000):
            ml.action_cursor_down()
            await asyncio.sleep(0)
        scroll = (await probe.until_drawn(1000, ml) - t2) * 1000
        await pilot.pause()
        rss = psutil.Process().memory_info().rss / 2**20
    await cache.close()
    return {
        "messages": n,
        "first_paint_ms": round(first_paint, 1),
        "open_folder_ms": round(open_folder, 1),
        "open_threaded_ms": round(open_threaded, 1),
        "scroll_1000_ms": round(scroll, 1),
        "rss_mib": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--keep", metavar="DIR", help="keep (and reuse) the seeded cache here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chmail-bench-") as tmp:
        where = Path(args.keep) if args.keep else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(bench(args.messages, where / f"cache-{args.messages}.sqlite3"))
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
