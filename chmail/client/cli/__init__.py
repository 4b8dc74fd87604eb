"""The ``chmail`` command line. Each module here owns a group of subcommands and exposes
``register(sub: argparse._SubParsersAction) -> None``; each command function takes the
parsed args and returns an exit status (or a coroutine that does).

Shared conventions: ``--json`` prints one JSON document for scripts; ``--password-stdin``
reads a password from standard input (never from argv, where ``ps`` would show it);
errors are ``ChmailError`` sentences printed to stderr with exit status 1 (2 for usage).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def read_password_stdin() -> str:
    """The first line of standard input, without its newline."""
    line = sys.stdin.readline()
    return line.rstrip("\r\n")
