"""Headers into the cache: batch inserts on the SQLite thread, and the indexing pass after.

Storing a batch writes only the rows and the folder counts, as one call on aiosqlite's
thread (one hand-off, no event-loop round trips per statement): that is what a folder
listing needs. What only some readers need is done right after a sync, in bulk, in the
background, by ``index_pending()``: thread ids (References / In-Reply-To), the address
book, and the search index (FTS5). Rows stored since the last pass have ``indexed = 0``
and ``thread_id = 0``; the readers that need the pass (search, threads, look-ups by
Message-ID, address completion) and ``close()`` wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import aiosqlite

from chmail.client import cache_search, cache_threads
from chmail.client.cache_local import LocalChanges, flags_text
from chmail.client.cache_models import SEEN, NewMessage
from chmail.errors import StoreError

_PENDING_SQL = (
    "SELECT id, message_id, refs, in_reply_to, thread_id, from_name, from_addr, subject"
    " FROM messages WHERE indexed = 0 ORDER BY id LIMIT ?"
)

_CHUNK = 500
_cached_flags_text = functools.lru_cache(maxsize=256)(flags_text)  # few flag sets per mailbox


def _flags_text(flags: Iterable[str]) -> str:
    return _cached_flags_text(flags) if type(flags) is tuple else flags_text(flags)


class Ingest(LocalChanges):
    _indexer: asyncio.Task[int] | None = None
    # Batches whose addresses the next pass adds to the address book (kept in memory:
    # a crash before the pass costs only some completion entries).
    _addr_backlog: list[Sequence[NewMessage]]

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        super().__init__(conn, path)
        self._addr_backlog = []

    async def add_messages(
        self, folder_id: int, msgs: Sequence[NewMessage], *, uidvalidity: int = 0
    ) -> int:
        """Insert (or refresh the flags of) messages by UID; returns how many were given.
        Thread ids, addresses and the search index follow in ``index_pending()``."""
        if not msgs:
            return 0
        async with self._write:
            try:
                await self.conn._execute(self._add_sync, folder_id, msgs, uidvalidity)  # type: ignore[no-untyped-call]
                self._addr_backlog.append(msgs)
            except sqlite3.Error as exc:
                await self.conn.rollback()
                raise StoreError(
                    f"The mail cache {self.path} could not be written: {exc}."
                ) from exc
            except BaseException:
                await self.conn.rollback()
                raise
        return len(msgs)

    def _add_sync(self, folder_id: int, msgs: Sequence[NewMessage], uidvalidity: int) -> None:
        db: sqlite3.Connection = self.conn._conn  # runs on aiosqlite's own thread
        known: set[int] = set()
        uids = [m.uid for m in msgs]
        # A first sync of a folder (the big one) has nothing to look up.
        has_rows = db.execute(
            "SELECT 1 FROM messages WHERE folder_id = ? LIMIT 1", (folder_id,)
        ).fetchone()
        for i in range(0, len(uids) if has_rows else 0, _CHUNK):
            part = uids[i : i + _CHUNK]
            marks = ",".join("?" * len(part))
            cur = db.execute(
                f"SELECT uid FROM messages WHERE folder_id = ? AND uid IN ({marks})",  # noqa: S608
                (folder_id, *part),
            )
            known.update(r[0] for r in cur.fetchall())
        fresh = [m for m in msgs if m.uid not in known]
        # Bound per row: what differs per row (13 values); the batch's folder and
        # UIDVALIDITY are integers written into the statement, seen / has_ch are derived
        # by SQLite from the flags and X-CH text (binding is most of the insert's cost).
        # thread_id and the sort keys of the rarer sort orders wait for the indexing pass.
        rows = [
            (
                m.uid, m.message_id, m.in_reply_to, " ".join(m.references),
                m.from_name, m.from_addr, m.to, m.cc, m.subject, m.date,
                _flags_text(m.flags), m.size,
                "".join(f"{n}: {v}\n" for n, v in m.ch_headers) if m.ch_headers else "",
            )
            for m in msgs
        ]  # fmt: skip
        db.executemany(
            "INSERT INTO messages (folder_id, uid, uidvalidity, message_id, in_reply_to,"  # noqa: S608 (two ints)
            " refs, thread_id, from_name, from_addr, to_addrs, cc_addrs, subject, date,"
            " flags, seen, size, has_ch, ch_headers, indexed)"
            f" VALUES ({int(folder_id)}, ?1, {int(uidvalidity)}, ?2, ?3, ?4, 0, ?5, ?6, ?7,"
            " ?8, ?9, ?10, ?11, instr(' ' || ?11 || ' ', ' \\Seen ') > 0, ?12, ?13 != '',"
            " ?13, 0)"
            " ON CONFLICT (folder_id, uid) DO UPDATE SET flags = excluded.flags,"
            " seen = excluded.seen",
            rows,
        )
        if fresh:  # folder counts for the new rows, once (0003: no per-row trigger)
            unread = sum(1 for m in fresh if SEEN not in m.flags)
            db.execute(
                "UPDATE folders SET total = total + ?, unread = unread + ? WHERE id = ?",
                (len(fresh), unread, folder_id),
            )
        db.commit()

    def index_soon(self) -> None:
        """Index new rows in the background (search() and close() wait for it)."""
        if self._indexer is None or self._indexer.done():
            self._indexer = asyncio.ensure_future(self.index_pending())

    async def close(self) -> None:
        if self._indexer is not None:
            with contextlib.suppress(Exception):
                await self._indexer
        await super().close()

    async def index_pending(self, limit: int = 0) -> int:
        """The pass over rows stored since the last one: thread ids, address book, search
        index; returns how many rows. Sync starts it after storing headers (index_soon);
        ``limit`` bounds one call (0: all)."""
        async with self._write:
            backlog, self._addr_backlog = self._addr_backlog, []
            try:
                n: int = await self.conn._execute(self._index_sync, limit, backlog)  # type: ignore[no-untyped-call]
            except sqlite3.Error as exc:
                await self.conn.rollback()
                raise StoreError(
                    f"The mail cache {self.path} could not be written: {exc}."
                ) from exc
            except BaseException:
                await self.conn.rollback()
                raise
        return n

    def _index_sync(self, limit: int, backlog: list[Sequence[NewMessage]]) -> int:
        db: sqlite3.Connection = self.conn._conn  # runs on aiosqlite's own thread
        for msgs in backlog:
            cache_search.note_addresses_sync(db, msgs)
        rows = db.execute(_PENDING_SQL, (limit or -1,)).fetchall()
        if rows:
            top = rows[-1][0]
            db.execute(
                "INSERT INTO messages_fts (rowid, subject, sender, recipients, body)"
                " SELECT id, subject, from_name || ' ' || from_addr, to_addrs || ' ' || cc_addrs,"
                " coalesce(body_text, '') FROM messages WHERE indexed = 0 AND id <= ?",
                (top,),
            )
            unthreaded = [r for r in rows if not r[4]]  # (rows stored before 0005 have one)
            tids = iter(
                cache_threads.assign(
                    db, [cache_threads.thread_keys(r[1], r[2], r[3]) for r in unthreaded]
                )
            )
            db.executemany(
                "UPDATE messages SET thread_id = ?, sort_from = ?, sort_subject = ?, indexed = 1"
                " WHERE id = ?",
                [
                    (r[4] or next(tids), (r[5] or r[6]).casefold(),
                     cache_search.subject_key(r[7]), r[0])
                    for r in rows
                ],
            )  # fmt: skip
        db.commit()
        return len(rows)
