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
import logging
import os
import sqlite3
from collections.abc import Awaitable, Sequence
from pathlib import Path

import aiosqlite

from chmail.client import cache_search, cache_stage, cache_threads
from chmail.client.cache_local import LocalChanges
from chmail.client.cache_models import SEEN, Batch, NewMessage, StagedBatch
from chmail.errors import StoreError

log = logging.getLogger(__name__)

_PENDING_SQL = (
    "SELECT id, message_id, refs, in_reply_to, thread_id, from_name, from_addr, subject"
    " FROM messages WHERE indexed = 0 ORDER BY id LIMIT ?"
)

_CHUNK = 500


class BadImage(Exception):
    """A staged batch's image is not the database it should be."""


class Ingest(LocalChanges):
    _indexer: asyncio.Task[int] | None = None
    # Addresses of stored batches that the next pass adds to the address book (kept in
    # memory: a crash before the pass costs only some completion entries).
    _addr_backlog: list[tuple[str, str]]

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        super().__init__(conn, path)
        self._addr_backlog = []
        self._addr_packed: list[bytes] = []  # more of them, packed (staged batches)
        self._stage: cache_stage.Stage | None = None
        self._stage_lock = asyncio.Lock()
        self._stage_failed = False

    def ingest(self, folder_id: int, *, uidvalidity: int = 0) -> Sink:
        """A sink for the header batches of one folder's sync: ``await sink.add(batch)``
        returns once the batch is staged, while the previous one is still being moved in;
        ``async with`` waits for all of them at the end."""
        return Sink(self, folder_id, uidvalidity)

    async def _staging(self) -> cache_stage.Stage | None:
        """The stage, attached to the cache connection (None if that fails)."""
        async with self._stage_lock:
            if self._stage is None and not self._stage_failed:
                stage = cache_stage.Stage(f"chmail-stage-{os.getpid()}-{id(self)}")
                try:
                    async with self._write:
                        await self.conn.commit()  # ATTACH needs no open transaction
                        for sql, args in stage.attach_sql():
                            await self.conn.execute(sql, args)
                        if cache_stage.IMAGES:
                            await self.conn.execute(
                                "ATTACH DATABASE ':memory:' AS " + cache_stage.IMAGE
                            )
                except sqlite3.Error as exc:
                    log.warning("no staging (%s): batches are stored one by one", exc)
                    stage.close()
                    self._stage_failed = True
                    return None
                self._stage = stage
        return self._stage

    async def _move(
        self, folder_id: int, uidvalidity: int, table: int, msgs: Sequence[NewMessage]
    ) -> None:
        async with self.transaction() as conn:  # commits in _move_sync; rolls back on error
            await conn._execute(self._move_sync, folder_id, uidvalidity, table)  # type: ignore[no-untyped-call]
            self._addr_backlog += cache_stage.address_pairs(msgs)

    def _move_sync(self, folder_id: int, uidvalidity: int, table_no: int) -> None:
        """Stage slot -> messages, on the SQLite thread: each statement is one step, so
        the GIL is released for the whole of it."""
        self._move_table_sync(folder_id, uidvalidity, cache_stage.Stage.table(table_no))

    def _move_table_sync(self, folder_id: int, uidvalidity: int, table: str) -> None:
        """The rows of ``table`` (``cache_stage.COLS``) into messages, the folder counts
        raised by the new ones, and commit."""
        db: sqlite3.Connection = self.conn._conn
        new, unread = db.execute(cache_stage.counts_sql(folder_id, table)).fetchone()
        db.execute(cache_stage.insert_sql(folder_id, uidvalidity, f"SELECT * FROM {table}"))  # noqa: S608
        if new:
            db.execute(
                "UPDATE folders SET total = total + ?, unread = unread + ? WHERE id = ?",
                (new, unread, folder_id),
            )
        db.commit()

    async def _move_image(self, folder_id: int, uidvalidity: int, batch: StagedBatch) -> None:
        """A staged batch's image -> messages, on the SQLite thread; if the image cannot
        be read, the batch is parsed again here and stored as messages (nothing lost)."""
        async with self.transaction() as conn:  # commits in the sync call; rolls back on error
            try:
                packed = await conn._execute(  # type: ignore[no-untyped-call]
                    self._move_image_sync, folder_id, uidvalidity, batch.image, batch.count
                )
            except BadImage as exc:
                log.warning("a staged batch of headers was unreadable (%s); parsing it again", exc)
                msgs = batch.messages()
                await conn._execute(self._add_sync, folder_id, msgs, uidvalidity)  # type: ignore[no-untyped-call]
                self._addr_backlog += cache_stage.address_pairs(msgs)
            else:
                self._addr_packed.append(packed)

    def _move_image_sync(self, folder_id: int, uidvalidity: int, image: bytes, count: int) -> bytes:
        """Returns the image's packed address pairs (read by the indexing pass)."""
        db: sqlite3.Connection = self.conn._conn
        img = cache_stage.IMAGE
        try:
            db.deserialize(image, name=img)
            (n,) = db.execute(f"SELECT count(*) FROM {img}.s").fetchone()  # noqa: S608 (fixed)
            packed = db.execute(f"SELECT packed FROM {img}.pairs").fetchone()  # noqa: S608
            if n != count or packed is None or type(packed[0]) is not bytes:
                raise BadImage(f"{n} rows instead of {count}, or no address pairs")
        except (sqlite3.DatabaseError, BadImage) as exc:
            # a sound empty image in its place: the connection reads every attached
            # schema, and an unreadable one fails every statement after it
            db.deserialize(cache_stage.image_of([], []), name=img)
            raise BadImage(str(exc)) from exc
        self._move_table_sync(folder_id, uidvalidity, f"{img}.s")
        pairs: bytes = packed[0]
        return pairs

    async def add_messages(
        self, folder_id: int, msgs: Sequence[NewMessage], *, uidvalidity: int = 0
    ) -> int:
        """Insert (or refresh the flags of) messages by UID; returns how many were given.
        Thread ids, addresses and the search index follow in ``index_pending()``."""
        if not msgs:
            return 0
        async with self.transaction() as conn:  # commits in _add_sync; rolls back on error
            await conn._execute(self._add_sync, folder_id, msgs, uidvalidity)  # type: ignore[no-untyped-call]
            self._addr_backlog += cache_stage.address_pairs(msgs)
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
        db.executemany(
            "INSERT INTO messages (folder_id, uid, uidvalidity, message_id, in_reply_to,"  # noqa: S608 (two ints)
            " refs, thread_id, from_name, from_addr, to_addrs, cc_addrs, subject, date,"
            " flags, seen, size, has_ch, ch_headers, indexed)"
            f" VALUES ({int(folder_id)}, ?1, {int(uidvalidity)}, ?2, ?3, ?4, 0, ?5, ?6, ?7,"
            " ?8, ?9, ?10, ?11, instr(' ' || ?11 || ' ', ' \\Seen ') > 0, ?12, ?13 != '',"
            " ?13, 0)"
            " ON CONFLICT (folder_id, uid) DO UPDATE SET flags = excluded.flags,"
            " seen = excluded.seen",
            cache_stage.rows(msgs),
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
        if self._stage is not None:
            self._stage.close()
            self._stage = None

    async def index_pending(self, limit: int = 0) -> int:
        """The pass over rows stored since the last one: thread ids, address book, search
        index; returns how many rows. Sync starts it after storing headers (index_soon);
        ``limit`` bounds one call (0: all)."""
        async with self.transaction() as conn:  # commits in _index_sync; rolls back on error
            backlog, self._addr_backlog = self._addr_backlog, []
            packed, self._addr_packed = self._addr_packed, []
            n: int = await conn._execute(self._index_sync, limit, backlog, packed)  # type: ignore[no-untyped-call]
        return n

    def _index_sync(self, limit: int, backlog: list[tuple[str, str]], packed: list[bytes]) -> int:
        db: sqlite3.Connection = self.conn._conn  # runs on aiosqlite's own thread
        for blob in packed:
            try:
                backlog += cache_stage.unpack_pairs(blob)
            except ValueError as exc:  # (only completion entries are lost)
                log.warning("address pairs of a staged batch unreadable: %s", exc)
        if backlog:
            cache_search.note_pairs_sync(db, backlog)
        rows = db.execute(_PENDING_SQL, (limit or -1,)).fetchall()
        if rows:
            top = rows[-1][0]
            db.execute(
                "INSERT INTO messages_fts (rowid, subject, sender, recipients, body)"
                " SELECT id, chm_fts(subject), chm_fts(from_name || ' ' || from_addr),"
                " chm_fts(to_addrs || ' ' || cc_addrs), chm_fts(coalesce(body_text, ''))"
                " FROM messages WHERE indexed = 0 AND id <= ?",
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
        if rows:
            self._checkpoint_sync()
        return len(rows)

    def _checkpoint_sync(self) -> None:
        """Copy the write-ahead log into the database file now, not in the middle of the
        next sync (cache.WAL_CHECKPOINT_PAGES). From a connection of its own: the cache's
        connection refuses while any statement of its is unfinished. PASSIVE: it copies
        what no reader still needs and never waits."""
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=0)) as db:
                _, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the rows are committed; a later pass copies them
            log.debug("checkpoint after indexing skipped: %s", exc)
        else:
            log.debug("checkpoint after indexing: %s of %s log pages copied", copied, logged)


class Sink:
    """See ``Ingest.ingest``. Batches of messages are staged on the event loop's thread,
    staged batches (images) come staged; both are moved into the cache in order on the
    SQLite thread (cache_stage.py), two in flight at most; if staging is unavailable,
    each batch is stored by ``add_messages``."""

    def __init__(self, cache: Ingest, folder_id: int, uidvalidity: int) -> None:
        self.cache = cache
        self.folder_id = folder_id
        self.uidvalidity = uidvalidity
        self._moves: list[asyncio.Future[None] | None] = [None] * cache_stage.SLOTS
        self._n = 0
        self._stage: cache_stage.Stage | None = None
        self._tables: list[int] | None = None

    async def add(self, batch: Batch) -> int:
        """Stage one batch (messages, or a staged batch from the parse helper); returns
        how many messages it holds."""
        if not (batch.count if isinstance(batch, StagedBatch) else batch):
            return 0
        if self._n == 0:
            self._stage = await self.cache._staging()
            self._tables = self._stage.lease() if self._stage is not None else None
        stage, tables = self._stage, self._tables
        if stage is None or tables is None:  # (images come only where they can be read)
            msgs = batch.messages() if isinstance(batch, StagedBatch) else batch
            self._n += 1
            return await self.cache.add_messages(self.folder_id, msgs, uidvalidity=self.uidvalidity)
        slot = self._n % cache_stage.SLOTS
        previous = self._moves[slot]
        if previous is not None:
            self._moves[slot] = None
            await previous  # the move that read this slot is done (or raises)
        move: Awaitable[None]
        if isinstance(batch, StagedBatch):
            move = self.cache._move_image(self.folder_id, self.uidvalidity, batch)
            n = batch.count
        else:
            try:
                stage.put(tables[slot], cache_stage.rows(batch))
            except sqlite3.Error as exc:
                raise StoreError(f"The mail cache could not stage headers: {exc}.") from exc
            move = self.cache._move(self.folder_id, self.uidvalidity, tables[slot], batch)
            n = len(batch)
        self._moves[slot] = asyncio.ensure_future(move)
        self._n += 1
        return n

    async def wait(self) -> None:
        """Until every staged batch is in the cache (raises the first failure)."""
        pending = [m for m in self._moves if m is not None]
        self._moves = [None] * cache_stage.SLOTS
        results = await asyncio.gather(*pending, return_exceptions=True)
        if self._stage is not None and self._tables is not None:
            self._stage.give_back(self._tables)  # every move reading them is over
            self._tables = None
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def __aenter__(self) -> Sink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait()
