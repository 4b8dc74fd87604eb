"""``chmail demo``: everything local, in one data directory, then the TUI as alice.

* The first ``chmail demo`` starts the services in a child process (``--serve``): the CH
  server, the local mail stack (Dovecot + an aiosmtpd relay when Dovecot is installed,
  else Maildirs behind the relay), the demo users alice, bob and a mall operator, and a
  seeded mailbox with a chat-enabled mail from bob and a mall campaign mail. The child
  writes ``demo.json`` (ports, pid, passwords) in the data directory when it is ready.
* ``chmail demo --as bob`` finds that file, checks the services answer, and joins the
  same demo. Each user has their own config and cache under ``users/<name>/``.
* The ``chmail demo`` that started the services stops them when its TUI exits (and
  ``chmail demo --stop`` stops a demo left running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from chmail import config as cfgmod
from chmail.errors import ChmailError

STATE = "demo.json"
START_TIMEOUT = 90.0
USERS = {
    "alice": ("Alice Lee", "alice@example.org"),
    "bob": ("Bob Martin", "bob@example.org"),
    "operator": ("Mall operator", "operator@example.org"),
}
MALL = ("mall", "Mall of Example", "mall@shop.example")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="local CH server + mail + demo users, then the TUI as alice",
        description="Start a self-contained demo (CH server, mail server, users alice, bob "
        "and a mall operator) and open the TUI. Run `chmail demo --as bob` in a second "
        "terminal to join the same demo.",
    )
    p.add_argument("--data", metavar="DIR", help="data directory (default: DATA/chmail/demo)")
    p.add_argument("--as", dest="as_user", choices=sorted(USERS), default="alice")
    p.add_argument("--stop", action="store_true", help="stop a demo left running")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data).expanduser().resolve() if args.data else cfgmod.data_dir() / "demo"


# ---------------------------------------------------------------------------- state


def read_state(data: Path) -> dict[str, Any] | None:
    """The running demo's state, or None when there is none (or it died)."""
    try:
        state: dict[str, Any] = json.loads((data / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    if not _accepts(int(state["ch_port"])):
        return None
    return state


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def write_state(data: Path, state: dict[str, Any]) -> None:
    tmp = data / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(data / STATE)


def user_config(data: Path, state: dict[str, Any], user: str) -> Path:
    """Write ``users/<user>/config.toml`` for this demo; its path."""
    name, email = USERS[user]
    pw = state["passwords"][user]
    account: dict[str, Any] = {
        "name": user,
        "email": email,
        "display_name": name,
        "kind": state["kind"],
        "operator": user == "operator",
        "smtp": {"host": "127.0.0.1", "port": state["smtp_port"], "security": "plain"},
        "ch": {
            "server": f"127.0.0.1:{state['ch_port']}",
            "login": user,
            "password_command": f"printf %s {pw}",
        },
    }
    if state["kind"] == "imap":
        account["imap"] = {
            "host": "127.0.0.1",
            "port": state["imap_port"],
            "security": "plain",
            "user": user,
            "password_command": f"printf %s {pw}",
        }
    else:
        account["maildir"] = str(Path(state["mail_root"]) / user / "Maildir")
    home = data / "users" / user
    home.mkdir(parents=True, exist_ok=True)
    doc = {"accounts": [account], "ui": {"log_file": str(home / "chmail.log")}}
    path = home / "config.toml"
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------- client side


async def run(args: argparse.Namespace) -> int:
    data = data_dir(args)
    data.mkdir(parents=True, exist_ok=True)
    if args.serve:
        from chmail.client.cli.demo_services import serve

        return await serve(data)
    state = read_state(data)
    if args.stop:
        if state is None:
            print("No demo is running in", data)
            return 0
        os.kill(int(state["pid"]), signal.SIGTERM)
        print("Demo stopped.")
        return 0
    owner: subprocess.Popen[bytes] | None = None
    if state is None:
        owner, state = await start_services(data)
        # A closed terminal (SIGHUP) or a kill (SIGTERM) still stops what we started.
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, _exit_on_signal)
    else:
        print(f"Joining the running demo in {data} as {args.as_user}.", file=sys.stderr)
    try:
        from chmail.client.cli.tui import run_tui
        from chmail.client.tui.boot import log_to_file

        config = cfgmod.load(user_config(data, state, args.as_user))
        log_to_file(config)
        cache = data / "users" / args.as_user / "cache.sqlite3"
        return await run_tui(config, cache)
    finally:
        if owner is not None:
            stop_services(owner)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


async def start_services(data: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the services child; wait until it has written its state."""
    print(
        f"Starting the chmail demo in {data}: CH server, mail server, users alice, bob, operator…",
        file=sys.stderr,
    )
    with contextlib.suppress(FileNotFoundError):
        (data / STATE).unlink()
    for sub in ("users", "chserver"):
        shutil.rmtree(data / sub, ignore_errors=True)
    log = (data / "services.log").open("ab")
    proc = subprocess.Popen(  # noqa: ASYNC220 -- returns at once; the child outlives us
        [sys.executable, "-m", "chmail.client", "demo", "--serve", "--data", str(data)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChmailError(
                f"The demo services exited (status {proc.returncode}); see {data / 'services.log'}."
            )
        state = read_state(data)
        if state is not None:
            return proc, state
        await asyncio.sleep(0.1)  # polling the child's state file, with a deadline
    stop_services(proc)
    raise ChmailError(f"The demo did not start within {START_TIMEOUT:.0f} s; see services.log.")


def stop_services(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    print("Demo stopped.", file=sys.stderr)
