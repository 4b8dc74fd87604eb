"""``chmail``: the mail client. Without a subcommand it opens the TUI."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence

from chmail import __version__
from chmail.errors import ChmailError

# Subcommand groups, one module each (see chmail/client/cli/__init__.py).
GROUPS = ("ch", "mail", "chat", "demo", "tui")

EPILOG = """\
examples:
  chmail                         open the TUI on the configured accounts
  chmail demo                    local CH server + mail + demo users, TUI as alice
  chmail demo --as bob           join the running demo as bob (second terminal)
  chmail sync                    fetch new mail into the local cache
  chmail send --to bob@example.org --subject hi < body.txt
  chmail search 'invoice' --json
  chmail chat '<id@host>'        chat about a mail from the command line
  chmail ch status               check the link to the CH server

config: --config FILE, else $CHMAIL_CONFIG, else ~/.config/chmail/config.toml
(docs/configuration.md lists every setting).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chmail",
        description="A terminal mail client that turns any mail into a live chat.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chmail {__version__}")
    parser.add_argument("--config", metavar="FILE", help="config file (TOML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"chmail.client.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"chmail.client.cli.{group}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        func = getattr(args, "default_func", None)
        if func is None:
            try:
                from chmail.client.cli.tui import open_tui
            except ModuleNotFoundError:
                parser.print_help()
                return 2
            func = open_tui
    try:
        result = func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except ChmailError as exc:
        print(f"chmail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
