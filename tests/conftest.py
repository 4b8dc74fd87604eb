"""Shared test set-up: real servers come from tests/fixtures/*, one module per server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.chserver",
    "tests.fixtures.mailstack",
]


@pytest.fixture(autouse=True)
def _hide_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the developer's real config, data or keyring."""
    home = tmp_path / "home"
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HOME", str(home))
    for var in list(os.environ):
        if var.startswith("CHMAIL_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop aiosqlite worker threads a failed test left open, so pytest can exit.

    aiosqlite's worker is a non-daemon thread: one connection left unclosed (a test that failed
    inside its teardown) would keep the interpreter alive after the summary and CI would time
    out instead of reporting the failure. A leak is itself a bug, so it also fails the run.
    """
    import gc
    import warnings

    import aiosqlite

    gc.collect()
    leaked = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, aiosqlite.Connection) and obj._thread.is_alive()
    ]
    for conn in leaked:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.stop()
    if leaked:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(
            f"{len(leaked)} aiosqlite connection(s) were left open by the tests; "
            "closed them so the run can end. Close connections in fixtures' teardown.",
            red=True,
        )
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
