"""Headers into the cache: batch inserts on the SQLite thread, and search indexing after.

The whole batch (threads, rows, folder counts, address book) runs as one call on
aiosqlite's thread, so it costs one hand-off and no event-loop round trips per statement.
Search indexing (FTS5) is done right after a sync, in bulk, in the background;
``Cache.search()`` and ``close()`` wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Iterable, Sequence

from chmail.client import cache_search, cache_threads
from chmail.client.cache_local import LocalChanges, flags_text
from chmail.client.cache_models import SEEN, NewMessage
from chmail.errors import StoreError

_CHUNK = 500
_cached_flags_text = functools.lru_cache(maxsize=256)(flags_text)  # few flag sets per mailbox


def _flags_text(flags: Iterable[str]) -> str:
    return _cached_flags_text(flags) if type(flags) is tuple else flags_text(flags)


class Ingest(LocalChanges):
    _indexer: asyncio.Task[int] | None = None

    async def add_messages(
        self, folder_id: int, msgs: Sequence[NewMessage], *, uidvalidity: int = 0
    ) -> int:
        """Insert (or refresh the flags of) messages by UID; returns how many were given.

        The whole batch (threads, rows, address book) runs as one call on the SQLite
        thread, so sync can parse the next batch on the event loop meanwhile (sqlite3
        releases the GIL while it writes)."""
        if not msgs:
            return 0
        async with self._write:
            try:
                await self.conn._execute(self._add_sync, folder_id, msgs, uidvalidity)  # type: ignore[no-untyped-call]
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
        tids = cache_threads.assign(db, msgs)
        # Bound per row: what differs per row (16 values); the batch's folder and
        # UIDVALIDITY are integers written into the statement, seen / has_ch are derived
        # by SQLite from the flags and X-CH text (binding is most of the insert's cost).
        rows = [
            (
                m.uid, m.message_id, m.in_reply_to, " ".join(m.references), tid,
                m.from_name, m.from_addr, m.to, m.cc, m.subject, m.date,
                _flags_text(m.flags), m.size,
                "".join(f"{n}: {v}\n" for n, v in m.ch_headers) if m.ch_headers else "",
                (m.from_name or m.from_addr).casefold(), cache_search.subject_key(m.subject),
            )
            for m, tid in zip(msgs, tids, strict=True)
        ]  # fmt: skip
        db.executemany(
            "INSERT INTO messages (folder_id, uid, uidvalidity, message_id, in_reply_to,"  # noqa: S608 (two ints)
            " refs, thread_id, from_name, from_addr, to_addrs, cc_addrs, subject, date,"
            " flags, seen, size, has_ch, ch_headers, sort_from, sort_subject, indexed)"
            f" VALUES ({int(folder_id)}, ?1, {int(uidvalidity)}, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
            " ?9, ?10, ?11, ?12, instr(' ' || ?12 || ' ', ' \\Seen ') > 0, ?13, ?14 != '',"
            " ?14, ?15, ?16, 0)"
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
        cache_search.note_addresses_sync(db, msgs)
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
        """Add rows stored since the last call to the search index; returns how many.
        Sync calls this after storing headers; ``limit`` bounds one call (0: all)."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT max(id), count(*) FROM (SELECT id FROM messages WHERE indexed = 0"
                " ORDER BY id LIMIT ?)",
                (limit or -1,),
            ) as cur:
                row = await cur.fetchone()
            if row is None or not row[1]:
                return 0
            top, n = int(row[0]), int(row[1])
            await db.execute(
                "INSERT INTO messages_fts (rowid, subject, sender, recipients, body)"
                " SELECT id, subject, from_name || ' ' || from_addr, to_addrs || ' ' || cc_addrs,"
                " coalesce(body_text, '') FROM messages WHERE indexed = 0 AND id <= ?",
                (top,),
            )
            await db.execute(
                "UPDATE messages SET indexed = 1 WHERE indexed = 0 AND id <= ?", (top,)
            )
        return n
