"""The cache's connection plumbing, and the local edits the sync engine queues.

``CacheBase`` owns the connection, the write lock and the read helper; ``LocalChanges``
holds the edits a user makes before the server hears of them (flags, moves, deletes, the
queue of pending server operations) and the POP3 UIDL record. ``cache.Cache`` builds on
both. SQL lives only in the cache modules.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from chmail.client.cache_models import SEEN, PendingOp, flags_text
from chmail.errors import StoreError

__all__ = ["CacheBase", "LocalChanges", "flags_text"]


class CacheBase:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._write = asyncio.Lock()

    async def close(self) -> None:
        await self.conn.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (serialised with every other write)."""
        async with self._write:
            try:
                yield self.conn
                await self.conn.commit()
            except sqlite3.Error as exc:
                await self.conn.rollback()
                raise StoreError(
                    f"The mail cache {self.path} could not be written: {exc}."
                ) from exc
            except BaseException:
                await self.conn.rollback()
                raise

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self.conn.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"The mail cache {self.path} could not be read: {exc}.") from exc


class LocalChanges(CacheBase):
    # ------------------------------------------------------------------ local changes

    async def set_flags(self, pk: int, flags: Iterable[str]) -> None:
        """Replace a message's flags in the cache (the sync pushes them; see queue_op)."""
        text = flags_text(flags)
        async with self.transaction() as db:
            await db.execute(
                "UPDATE messages SET flags = ?, seen = ? WHERE id = ?",
                (text, int(SEEN in text.split()), pk),
            )

    async def move(self, pk: int, folder_id: int, new_uid: int | None = None) -> None:
        """Move in the cache: with the destination UID (UIDPLUS) the row moves; without it
        the row goes and the next sync of the destination brings the message back."""
        async with self.transaction() as db:
            if new_uid is None:
                await db.execute("DELETE FROM messages WHERE id = ?", (pk,))
            else:
                await db.execute(
                    "DELETE FROM messages WHERE folder_id = ? AND uid = ?", (folder_id, new_uid)
                )
                await db.execute(
                    "UPDATE messages SET folder_id = ?, uid = ? WHERE id = ?",
                    (folder_id, new_uid, pk),
                )

    async def rekey(self, folder_id: int, old_uid: int, new_uid: int | None) -> None:
        """Give a locally moved row (placeholder UID) its server UID, or drop it when the
        server did not say (the next sync of the folder brings the message back)."""
        async with self.transaction() as db:
            if new_uid is None:
                await db.execute(
                    "DELETE FROM messages WHERE folder_id = ? AND uid = ?", (folder_id, old_uid)
                )
                return
            await db.execute(
                "DELETE FROM messages WHERE folder_id = ? AND uid = ?", (folder_id, new_uid)
            )
            await db.execute(
                "UPDATE messages SET uid = ? WHERE folder_id = ? AND uid = ?",
                (new_uid, folder_id, old_uid),
            )

    async def delete(self, pk: int) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM messages WHERE id = ?", (pk,))

    async def queue_op(self, account: str, kind: str, folder: str, uid: int, arg: str = "") -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO pending_ops (account, kind, folder, uid, arg, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (account, kind, folder, uid, arg, time.time()),
            )

    async def pending_ops(self, account: str) -> list[PendingOp]:
        rows = await self._all(
            "SELECT id, account, kind, folder, uid, arg FROM pending_ops WHERE account = ?"
            " ORDER BY id",
            (account,),
        )
        return [PendingOp(*r) for r in rows]

    async def done_op(self, op_id: int) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM pending_ops WHERE id = ?", (op_id,))

    # ------------------------------------------------------------------ POP3

    async def pop3_known(self, account: str) -> set[str]:
        rows = await self._all("SELECT uidl FROM pop3_seen WHERE account = ?", (account,))
        return {r[0] for r in rows}

    async def pop3_mark(self, account: str, uidls: Iterable[str]) -> None:
        async with self.transaction() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO pop3_seen (account, uidl, fetched) VALUES (?, ?, ?)",
                [(account, u, time.time()) for u in uidls],
            )
