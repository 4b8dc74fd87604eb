"""Table 2 on disk: ``<data>/leases.sqlite3``, written from the event loop. All its SQL.

Rules:

* Only the running server writes this file, through one plain ``sqlite3`` connection
  on the event loop's thread: a batch of allocations is one short ``BEGIN IMMEDIATE``
  transaction (tens of microseconds), with no thread hop and no lock shared with the
  other modules' connection to ``chserver.sqlite3``. Readers (``tables``,
  ``check-headers``) never block it (WAL).
* WAL with ``synchronous=NORMAL``: a commit is in the operating system's hands when it
  returns, so it survives the server process dying (SIGKILL, crash); a power cut or a
  kernel crash may lose the commits since the last checkpoint.
* The writer never checkpoints inside a commit (``wal_autocheckpoint=0``: that would
  fsync on the event loop); :meth:`LeaseStore.checkpoint` does it in a worker thread.
* ``lease_reserved`` (meta) is raised in the same transaction as the first lease that
  uses a new block of numbers, so it is never below a lease number acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from chmail import migrate
from chmail.chserver.ports import Lease
from chmail.errors import StoreError

log = logging.getLogger(__name__)

LEASE_FILE = "leases.sqlite3"
LEASE_COUNTER = "lease_reserved"  # meta key: lease numbers up to it may have been used
BUSY_TIMEOUT_MS = 1000  # only this server writes the file; a wait means someone else does

_COLUMNS = (
    "port, login, host, lease, message_id, message_ids, recipients, context,"
    " allocated_at, updated_at, expires"
)
_SAVE_LEASE = f"INSERT OR REPLACE INTO ports({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_ADOPT_LEASE = f"INSERT OR IGNORE INTO ports({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_RAISE_COUNTER = (
    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
    " SET value = max(value, excluded.value)"
)
ROWS_PER_STATEMENT = 500  # 11 parameters each: well below SQLite's 32,766 limit


class LeaseStore:
    """The lease file: one connection for the loop, one for checkpoints (worker thread)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._cursor = conn.cursor()  # the one-lease save's, kept (not one per execute)
        self.path = path
        self._ckpt: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> LeaseStore:
        with contextlib.suppress(FileExistsError):  # who mails whom: owner only
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = await migrate.connect(path, "leases")  # create or upgrade the schema
        await db.close()
        try:
            conn = sqlite3.connect(str(path), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open table 2 in {path}: {exc}.") from exc
        return cls(conn, path)

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None
        self._cursor.close()
        self._conn.close()  # the last connection to close checkpoints the rest

    # ------------------------------------------------------------------ reading

    def leases(self) -> list[Lease]:
        rows = self._read(f"SELECT {_COLUMNS} FROM ports ORDER BY port", ())  # noqa: S608
        return [_lease(r) for r in rows]

    def lease(self, port: int) -> Lease | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM ports WHERE port = ?", (port,))  # noqa: S608
        return _lease(rows[0]) if rows else None

    def reserved(self) -> int:
        """``lease_reserved``: numbering resumes above it after a restart."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (LEASE_COUNTER,))
        return int(rows[0][0]) if rows else 0

    def _read(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot read table 2 from {self.path}: {exc}.") from exc

    # ------------------------------------------------------------------ writing

    def save(self, leases: Sequence[Lease], reserved: int | None = None) -> None:
        """Write (insert or replace) ``leases`` and raise ``lease_reserved`` to
        ``reserved`` (if given) in one transaction; StoreError if that failed."""
        conn = self._conn
        try:
            if len(leases) == 1 and reserved is None:  # one statement: its own transaction
                self._cursor.execute(_SAVE_LEASE, _lease_row(leases[0]))
                return
            with _immediate(conn):
                if len(leases) == 1:
                    conn.execute(_SAVE_LEASE, _lease_row(leases[0]))
                else:
                    for i in range(0, len(leases), ROWS_PER_STATEMENT):
                        chunk = leases[i : i + ROWS_PER_STATEMENT]
                        args = [v for x in chunk for v in _lease_row(x)]
                        conn.execute(_save_many(len(chunk)), args)
                if reserved is not None:
                    conn.execute(_RAISE_COUNTER, (LEASE_COUNTER, reserved))
        except sqlite3.Error as exc:
            raise StoreError(f"Table 2 could not be written to {self.path}: {exc}.") from exc

    def adopt(self, rows: Sequence[Sequence[Any]], reserved: int) -> None:
        """Take rows of the old ``ports`` table (chserver.sqlite3) and its counter; rows
        for ports this file already holds are kept as they are here."""
        conn = self._conn
        try:
            with _immediate(conn):
                conn.executemany(_ADOPT_LEASE, rows)
                conn.execute(_RAISE_COUNTER, (LEASE_COUNTER, reserved))
        except sqlite3.Error as exc:
            raise StoreError(f"Moving table 2 into {self.path} failed: {exc}.") from exc

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never blocks the writer).
        Blocking (it fsyncs): run it in a worker thread, one at a time."""
        try:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False
                )
            self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("checkpoint of %s failed: %s", self.path, exc)


@functools.lru_cache(maxsize=64)
def _save_many(n: int) -> str:
    return _SAVE_LEASE + ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" * (n - 1)


def _lease_row(x: Lease) -> tuple[object, ...]:
    return (
        x.port,
        x.login,
        x.host,
        x.lease,
        x.message_id,
        _json_list(x.message_ids),
        _json_list(x.recipients),
        x.context,
        x.allocated_at,
        x.updated_at,
        x.expires,
    )


def _json_list(values: tuple[str, ...]) -> str:
    """``json.dumps(list(values))``, joined directly when nothing needs escaping (the
    common case: Message-IDs and addresses are printable ASCII without quotes)."""
    text = " ".join(values)
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '["' + '", "'.join(values) + '"]' if values else "[]"
    return json.dumps(list(values))


def _lease(r: Any) -> Lease:
    try:
        return Lease(
            port=int(r[0]),
            login=str(r[1]),
            host=str(r[2]),
            lease=int(r[3]),
            message_id=str(r[4]),
            message_ids=tuple(json.loads(str(r[5]))),
            recipients=tuple(json.loads(str(r[6]))),
            context=str(r[7]),
            allocated_at=int(r[8]),
            updated_at=int(r[9]),
            expires=int(r[10]),
        )
    except (ValueError, TypeError) as exc:
        raise StoreError(f"Table 2 holds a damaged row for port {r[0]!r}: {exc}.") from exc


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One BEGIN IMMEDIATE transaction: committed after the block, rolled back if it raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
