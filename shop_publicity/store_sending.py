"""The shop DB's sending side: per-recipient status, the event log, chats per campaign.

SQL only (like store.py); ``Store`` inherits these methods. ``apply()`` is the sender's
group commit: many recipients' state changes, and the events they cause, in one
transaction and a few round trips to the database thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from chmail.errors import StoreError
from shop_publicity import models as m
from shop_publicity.store_rows import MEMBER_COLS as _MEMBER_COLS
from shop_publicity.store_rows import member_row as _member

log = logging.getLogger(__name__)

SQL_SENDING = (
    "UPDATE recipients SET status = 'sending', ch_headers = ?, updated_at = ?"
    " WHERE campaign_id = ? AND member_id = ?"
)
SQL_FINAL = (
    "UPDATE recipients SET status = ?, last_error = ?, next_at = ?, attempts = attempts + ?,"
    " updated_at = ?, sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END"
    " WHERE campaign_id = ? AND member_id = ?"
)
SQL_RELEASE = (
    "UPDATE recipients SET status = 'pending', updated_at = ?"
    " WHERE campaign_id = ? AND member_id = ? AND status = 'sending'"
)
SQL_EVENT = "INSERT INTO events(campaign_id, kind, member_id, at, data) VALUES (?,?,?,?,?)"
_KINDS = {m.SENT: m.EV_SENT, m.FAILED: m.EV_FAILED}


def _batch(
    outcomes: Sequence[m.Outcome],
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Parameters for SQL_SENDING, SQL_FINAL, SQL_EVENT and SQL_RELEASE.

    A row's 'sending' is always posted before its final state or its release, and
    neither is followed by another 'sending' of the same row in one batch (a retry is
    read back from the table first), so all 'sending' rows can go first.
    """
    sending = [
        (o.ch_headers, o.at, o.campaign_id, o.member_id) for o in outcomes if o.status == m.SENDING
    ]
    released = [(o.at, o.campaign_id, o.member_id) for o in outcomes if o.status == m.RELEASE]
    finals = [o for o in outcomes if o.status not in (m.SENDING, m.RELEASE)]
    final_rows = [
        (
            o.status,
            o.error,
            o.next_at,
            o.attempts_inc,
            o.at,
            o.status,
            o.at,
            o.campaign_id,
            o.member_id,
        )
        for o in finals
    ]
    events = [
        (
            o.campaign_id,
            _KINDS[o.status],
            o.member_id,
            o.at,
            json.dumps({"error": o.error}) if o.error else "{}",
        )
        for o in finals
        if o.status in _KINDS
    ]
    return sending, final_rows, events, released


CHECKPOINT_S = 1.0  # at most one WAL checkpoint a second during a send


class _Busy(Exception):
    """The shop DB's write lock is held by another connection."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


class StatusWriter:
    """The sender's own SQLite connection, used on the event loop's thread.

    Each batch is one call (all statements and the commit; a pool's worth of rows is
    about 0.1 ms). That is cheaper than handing the batch to a thread: the hop and the
    GIL hand-over cost the loop more than the commit (bench/campaign.py: about 650
    instead of 800 µs of CPU per mail). Auto-checkpoint is off on this connection, so no
    commit on the loop fsyncs the database file (synchronous=NORMAL syncs only at
    checkpoints); a worker thread checkpoints (PASSIVE) on a connection of its own, at
    most once a second. A batch that meets another connection's write lock does not
    wait on the loop (that connection may be this process's own aiosqlite one, which
    needs the loop to commit): it is applied on the worker thread, which waits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shop-status")
        self.checkpointing: asyncio.Future[None] | None = None
        self.last_checkpoint = time.monotonic()

    def _connect(self) -> sqlite3.Connection:
        if self.db is None:
            # Used by one caller at a time (the committer runs one batch at a time): on
            # the loop, or on the worker thread when the database was busy.
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=0")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        return self.db

    def _apply(self, outcomes: Sequence[m.Outcome], wait: bool = False) -> None:
        """One transaction. Without ``wait`` a held write lock raises _Busy at once."""
        db = self._connect()
        sending, finals, events, released = _batch(outcomes)
        if wait:
            db.execute("PRAGMA busy_timeout=5000")
        try:
            with db:  # one transaction: commit, or roll back on error
                if sending:
                    db.executemany(SQL_SENDING, sending)
                if finals:
                    db.executemany(SQL_FINAL, finals)
                if events:
                    db.executemany(SQL_EVENT, events)
                if released:
                    db.executemany(SQL_RELEASE, released)
        except sqlite3.OperationalError as exc:
            if not wait and _busy(exc):
                raise _Busy from exc
            raise StoreError(f"Could not record the send status: {exc}.") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"Could not record the send status: {exc}.") from exc
        finally:
            if wait:
                db.execute("PRAGMA busy_timeout=0")

    def _checkpoint(self) -> None:
        db = sqlite3.connect(self.path)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one tries again; nothing is lost
            log.warning("WAL checkpoint of the shop DB failed: %s", exc)
        finally:
            db.close()

    async def apply(self, outcomes: Sequence[m.Outcome]) -> None:
        try:
            self._apply(outcomes)
        except _Busy:
            # Another writer holds the lock, maybe this process's own aiosqlite connection
            # mid-transaction, which needs the loop to finish: wait on the thread instead.
            await asyncio.get_running_loop().run_in_executor(
                self.pool, self._apply, list(outcomes), True
            )
        now = time.monotonic()
        if now - self.last_checkpoint >= CHECKPOINT_S and (
            self.checkpointing is None or self.checkpointing.done()
        ):
            self.last_checkpoint = now
            self.checkpointing = asyncio.get_running_loop().run_in_executor(
                self.pool, self._checkpoint
            )

    async def close(self) -> None:
        if self.checkpointing is not None:
            await self.checkpointing
        if self.db is not None:
            self.db.close()
            self.db = None
        await asyncio.get_running_loop().run_in_executor(self.pool, self._checkpoint)
        self.pool.shutdown(wait=True)


class SendingStore:
    def __init__(self, conn: aiosqlite.Connection, path: Path | None = None) -> None:
        self.conn = conn
        self.path = path
        self._writer: StatusWriter | None = None

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self.conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self.conn.execute(sql, args) as cur:
            return await cur.fetchone()

    # ------------------------------------------------------------------ recipients

    async def start_send(self, cid: int, rows: Sequence[tuple[int, str, str]]) -> bool:
        """Snapshot the recipients (member id, email, message-id) and mark the campaign
        sending, in one transaction. False (and nothing written) when it had started."""
        try:
            cur = await self.conn.execute(
                "UPDATE campaigns SET status = 'sending', started_at = ?"
                " WHERE id = ? AND status = 'draft'",
                (time.time(), cid),
            )
            if cur.rowcount == 0:
                await self.conn.rollback()
                return False
            await self.conn.executemany(
                "INSERT OR IGNORE INTO recipients(campaign_id, member_id, email, message_id)"
                " VALUES (?, ?, ?, ?)",
                [(cid, mid, email, msgid) for mid, email, msgid in rows],
            )
            await self.conn.commit()
        except sqlite3.Error as exc:
            await self.conn.rollback()
            raise StoreError(f"Could not start campaign {cid}: {exc}.") from exc
        return True

    async def recover_sending(self, cid: int) -> int:
        """Rows left 'sending' by a crash: DATA may or may not have been accepted.
        They go back to pending, counted in ``uncertain`` (see sender.py)."""
        cur = await self.conn.execute(
            "UPDATE recipients SET status = 'pending', uncertain = uncertain + 1, next_at = 0"
            " WHERE campaign_id = ? AND status = 'sending'",
            (cid,),
        )
        await self.conn.commit()
        return cur.rowcount

    async def due(self, cid: int, now: float, limit: int, after: int = 0) -> list[m.Recipient]:
        """Pending rows due by ``now`` (member id > ``after``), joined with the member."""
        rows = await self._all(
            f"SELECT {_MEMBER_COLS}, r.message_id, r.attempts, r.uncertain, r.ch_headers"  # noqa: S608
            " FROM recipients r JOIN members m ON m.id = r.member_id"
            " WHERE r.campaign_id = ? AND r.status = 'pending' AND r.next_at <= ?"
            " AND r.member_id > ? ORDER BY r.member_id LIMIT ?",
            (cid, now, after, limit),
        )
        return [
            m.Recipient(cid, _member(r), str(r[10]), int(r[11]), int(r[12]), str(r[13]))
            for r in rows
        ]

    async def next_due_at(self, cid: int) -> float | None:
        row = await self._one(
            "SELECT min(next_at) FROM recipients WHERE campaign_id = ? AND status = 'pending'",
            (cid,),
        )
        return None if row is None or row[0] is None else float(row[0])

    async def counts(self, cid: int) -> dict[str, int]:
        rows = await self._all(
            "SELECT status, count(*) FROM recipients WHERE campaign_id = ? GROUP BY status",
            (cid,),
        )
        out = {s: 0 for s in (m.PENDING, m.SENDING, m.SENT, m.FAILED, m.SKIPPED)}
        out.update({str(r[0]): int(r[1]) for r in rows})
        return out

    async def uncertain_total(self, cid: int) -> int:
        row = await self._one(
            "SELECT coalesce(sum(uncertain), 0) FROM recipients WHERE campaign_id = ?", (cid,)
        )
        return int(row[0])

    async def sent_since(self, since: float) -> int:
        # a scan (no index on sent_at: it cost every mail a write); only rate windows ask
        row = await self._one("SELECT count(*) FROM recipients WHERE sent_at >= ?", (since,))
        return int(row[0])

    async def failures(self, cid: int, limit: int = 20) -> list[tuple[str, str]]:
        rows = await self._all(
            "SELECT email, last_error FROM recipients WHERE campaign_id = ? AND status = 'failed'"
            " ORDER BY member_id LIMIT ?",
            (cid, limit),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    async def apply(self, outcomes: Sequence[m.Outcome]) -> None:
        """Write a batch of recipient state changes and their events in one transaction.

        Through the sender's own connection (StatusWriter: one thread hop per batch)
        when the store knows its file, else through the shared connection.
        """
        if self.path is not None:
            if self._writer is None:
                self._writer = StatusWriter(self.path)
            await self._writer.apply(outcomes)
            return
        sending, finals, events, released = _batch(outcomes)
        try:
            if sending:
                await self.conn.executemany(SQL_SENDING, sending)
            if finals:
                await self.conn.executemany(SQL_FINAL, finals)
            if events:
                await self.conn.executemany(SQL_EVENT, events)
            if released:
                await self.conn.executemany(SQL_RELEASE, released)
            await self.conn.commit()
        except sqlite3.Error as exc:
            await self.conn.rollback()
            raise StoreError(f"Could not record the send status: {exc}.") from exc

    async def close_writer(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ events

    async def _event(
        self, cid: int, kind: str, member_id: int | None, at: float, data: dict[str, Any]
    ) -> None:
        await self.conn.execute(
            "INSERT INTO events(campaign_id, kind, member_id, at, data) VALUES (?,?,?,?,?)",
            (cid, kind, member_id, at, json.dumps(data)),
        )

    async def add_event(
        self,
        cid: int,
        kind: str,
        member_id: int | None = None,
        data: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        await self._event(cid, kind, member_id, time.time() if at is None else at, data or {})
        await self.conn.commit()

    async def events_after(
        self, last_id: int, cid: int | None = None, limit: int = 5000
    ) -> list[m.Event]:
        if cid is None:
            rows = await self._all(
                "SELECT id, campaign_id, kind, member_id, at, data FROM events WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (last_id, limit),
            )
        else:
            rows = await self._all(
                "SELECT id, campaign_id, kind, member_id, at, data FROM events WHERE id > ?"
                " AND campaign_id = ? ORDER BY id LIMIT ?",
                (last_id, cid, limit),
            )
        return [
            m.Event(int(r[0]), int(r[1]), str(r[2]), r[3], float(r[4]), json.loads(r[5]))
            for r in rows
        ]

    # ------------------------------------------------------------------ chats

    async def chat_asked(
        self, cid: int | None, member_id: int | None, member_login: str, at: float
    ) -> int:
        cur = await self.conn.execute(
            "INSERT INTO chats(campaign_id, member_id, member_login, asked_at) VALUES (?,?,?,?)",
            (cid, member_id, member_login, at),
        )
        if cid is not None:
            await self._event(cid, m.EV_CHAT_ASKED, member_id, at, {"login": member_login})
        await self.conn.commit()
        return int(cur.lastrowid or 0)

    async def chat_answered(self, chat_id: int, operator: str, at: float) -> None:
        await self.conn.execute(
            "UPDATE chats SET operator = ?, answered_at = ? WHERE id = ?",
            (operator, at, chat_id),
        )
        row = await self._one(
            "SELECT campaign_id, member_id, asked_at FROM chats WHERE id = ?", (chat_id,)
        )
        if row is not None and row[0] is not None:
            await self._event(
                int(row[0]),
                m.EV_CHAT_ANSWERED,
                row[1],
                at,
                {"operator": operator, "wait": at - float(row[2])},
            )
        await self.conn.commit()

    async def chat_ended(self, chat_id: int, at: float, summary: str = "") -> None:
        await self.conn.execute(
            "UPDATE chats SET ended_at = ?, summary = ? WHERE id = ?", (at, summary, chat_id)
        )
        await self.conn.commit()

    async def open_chats(self) -> list[tuple[int, int, str, bool]]:
        """Chats not ended: (chat id, campaign, member login, answered)."""
        rows = await self._all(
            "SELECT id, campaign_id, member_login, answered_at IS NOT NULL FROM chats"
            " WHERE ended_at IS NULL AND campaign_id IS NOT NULL"
        )
        return [(int(r[0]), int(r[1]), str(r[2]), bool(r[3])) for r in rows]

    async def past_chats(self, member_id: int, limit: int = 10) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT c.id, c.campaign_id, c.operator, c.asked_at, c.answered_at, c.summary,"
            " k.name FROM chats c LEFT JOIN campaigns k ON k.id = c.campaign_id"
            " WHERE c.member_id = ? ORDER BY c.asked_at DESC LIMIT ?",
            (member_id, limit),
        )
        return [
            {
                "chat": r[0],
                "campaign": r[1],
                "operator": r[2],
                "asked_at": r[3],
                "answered_at": r[4],
                "summary": r[5],
                "campaign_name": r[6],
            }
            for r in rows
        ]
