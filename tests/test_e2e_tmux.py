"""End to end, as a person would do it: two real `chmail demo` TUIs in tmux.

alice mails bob, bob opens it and presses c, alice's terminal rings, she accepts, and they
chat both ways. Every step waits by polling capture-pane for the expected text, with a
deadline (never a fixed sleep). Uses its own tmux server socket, killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DEADLINE = 40.0
CHMAIL = str(Path(sys.executable).with_name("chmail"))


class Tmux:
    """A private tmux server with one window per user."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def run(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False
        )
        return out.stdout

    def start(self, name: str, command: str) -> None:
        self.run("new-session", "-d", "-s", name, "-x", "130", "-y", "40", command)

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def press(self, name: str, key: str) -> None:
        """Press ``key`` and wait until the screen (colours included) changes: focus moves
        are applied after the key is read, so the next key must wait for them."""
        before = self.run("capture-pane", "-e", "-p", "-t", name)
        self.keys(name, key)
        end = time.monotonic() + DEADLINE
        while self.run("capture-pane", "-e", "-p", "-t", name) == before:
            if time.monotonic() > end:
                raise AssertionError(f"{name}: pressing {key} changed nothing on screen")
            time.sleep(0.05)  # polling capture-pane for a condition, with a deadline

    def keys(self, name: str, *keys: str) -> None:
        self.run("send-keys", "-t", name, *keys)

    def text(self, name: str, text: str) -> None:
        self.run("send-keys", "-t", name, "-l", text)

    def wait(self, name: str, *needles: str, deadline: float = DEADLINE) -> str:
        end = time.monotonic() + deadline
        while True:
            shown = self.screen(name)
            if all(n in shown for n in needles):
                return shown
            if time.monotonic() > end:
                others = "".join(
                    f"\n--- {other}:\n{self.screen(other)}"
                    for other in self.run("list-sessions", "-F", "#{session_name}").split()
                    if other != name
                )
                raise AssertionError(f"{name} never showed {needles!r}; screen:\n{shown}{others}")
            time.sleep(0.1)  # polling capture-pane for a condition, with a deadline

    def alive(self, name: str) -> bool:
        return name in self.run("list-sessions", "-F", "#{session_name}")

    def kill(self) -> None:
        """Stop the tmux server and make sure no TUI it ran outlives the test."""
        pgids = []
        for pid in self.run("list-panes", "-a", "-F", "#{pane_pid}").split():
            with contextlib.suppress(ProcessLookupError):
                pgids.append(os.getpgid(int(pid)))
        self.run("kill-server")  # the panes' programs get SIGHUP and should quit by themselves
        end = time.monotonic() + 15
        while pgids and time.monotonic() < end:
            pgids = [g for g in pgids if _group_alive(g)]
            time.sleep(0.1)  # polling for the programs' own exit, with a deadline
        for g in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g, signal.SIGKILL)
        assert not pgids, "a TUI ignored its terminal hanging up (SIGHUP) and had to be killed"


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run ./run setup (it installs tmux)")
    t = Tmux(f"chmail-e2e-{os.getpid()}")
    yield t
    t.kill()


def _demo_pid(data: Path) -> int | None:
    try:
        return int(json.loads((data / "demo.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_alice_mails_bob_bob_chats_alice_accepts(tmux: Tmux, tmp_path: Path) -> None:
    """Two real TUIs: a mail, the chat key, a ring, accept, and lines both ways."""
    data = tmp_path / "demo"
    env = " ".join(
        f"{k}={v}" for k, v in os.environ.items() if k.startswith(("XDG_", "HOME", "PATH"))
    )
    tmux.start("alice", f"env {env} {CHMAIL} demo --data {data}; sleep 30")
    try:
        tmux.wait("alice", "Lunch on Friday?", "CH online", deadline=90)
        tmux.start("bob", f"env {env} {CHMAIL} demo --data {data} --as bob; sleep 30")
        tmux.wait("bob", "Slides for Monday", "CH online")

        # alice writes to bob
        tmux.keys("alice", "m")
        tmux.wait("alice", "New mail", "Subject")
        tmux.text("alice", "bob@example.org")
        tmux.wait("alice", "bob@example.org")
        tmux.press("alice", "Tab")
        tmux.press("alice", "Tab")
        tmux.text("alice", "Dinner on Saturday?")
        tmux.wait("alice", "Dinner on Saturday?")
        tmux.press("alice", "Tab")
        tmux.text("alice", "Shall we? Press c to chat.")
        tmux.wait("alice", "Shall we?")
        tmux.keys("alice", "C-s")
        tmux.wait("alice", "queued in the outbox")

        # bob gets it (IDLE push), opens it, presses c
        tmux.wait("bob", "Dinner on Saturday?")
        tmux.keys("bob", "g")
        tmux.keys("bob", "Enter")
        tmux.wait("bob", "Shall we? Press c to chat.", "online now")
        tmux.keys("bob", "c")

        # alice's terminal rings; she accepts
        shown = tmux.wait("alice", "Incoming chat", "bob wants to chat")
        assert "Dinner on Saturday?" in shown
        tmux.keys("alice", "y")
        tmux.wait("alice", "Chat with bob", "connected")
        tmux.wait("bob", "Chat with alice", "connected")

        # they chat, both ways
        tmux.text("bob", "hello alice")
        tmux.keys("bob", "Enter")
        tmux.wait("alice", "bob: hello alice")
        tmux.text("alice", "hi bob, 7pm?")
        tmux.keys("alice", "Enter")
        tmux.wait("bob", "alice: hi bob, 7pm?")
        tmux.wait("bob", "me: hello alice")
    finally:
        pid = _demo_pid(data)
        for name in ("bob", "alice"):
            if tmux.alive(name):
                tmux.keys(name, "C-q")
        end = time.monotonic() + 20
        while _demo_pid(data) is not None and time.monotonic() < end:
            time.sleep(0.1)  # polling for the demo's own shutdown, with a deadline
        if pid is not None and _demo_pid(data) is not None:
            os.kill(pid, signal.SIGTERM)
            pytest.fail("the demo's services did not stop when alice's TUI quit")
