"""``chmail`` (no subcommand) and ``chmail tui``: open the TUI.

Without a config, a setup screen writes one (or points to ``chmail demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from chmail import config as cfgmod


def register(sub: Any) -> None:
    p = sub.add_parser("tui", help="open the TUI (what `chmail` alone does)")
    p.set_defaults(func=open_tui)


async def run_tui(config: cfgmod.Config, cache_path: Path | None = None) -> int:
    from chmail.client.tui import boot
    from chmail.client.tui.app import ChmailApp

    engines = await boot.build(config, cache_path)
    app = ChmailApp(config, engines.mail, engines.chat)
    app.startup_notes.extend(engines.notes)
    engines.start_background()
    # A closed terminal (SIGHUP) or a polite kill (SIGTERM) ends the TUI the normal way, so
    # drafts are flushed and links closed; left to a raised SystemExit inside the event
    # loop, a hung-up TUI kept spinning on a dead terminal.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGHUP, signal.SIGTERM):
        loop.add_signal_handler(sig, app.exit)
    try:
        await app.run_async()
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engines.close()
    return 0


async def run_setup(path: Path) -> Path | None:
    from chmail.client.tui.setup_app import SetupApp

    app = SetupApp(path)
    await app.run_async()
    return app.return_value


async def open_tui_async(args: argparse.Namespace) -> int:
    from chmail.client.tui.boot import log_to_file

    config_arg = getattr(args, "config", None)
    config = cfgmod.load(config_arg)
    log_to_file(config)
    if not config.accounts:
        written = await run_setup(cfgmod.resolve_path(config_arg))
        if written is None:
            print("No config written. To look around first, run: chmail demo")
            return 0
        config = cfgmod.load(written)
    return await run_tui(config)


def open_tui(args: argparse.Namespace) -> Any:
    return open_tui_async(args)
