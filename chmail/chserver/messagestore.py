"""The chat messages of the CH server's relay sessions, in ``<data>/chat.sqlite``.

:class:`MessageLog` owns that file: one synchronous connection, used on the event loop
(no thread hop per commit), a transaction per turn of the loop holding every session's
batch, each batch one row of ``chat_batches`` (migration chat/0002). SQL of the other
chat tables is in chmail.chserver.chatstore.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import msgpack

from chmail import migrate
from chmail.chserver.chatstore import StoredMessage
from chmail.errors import StoreError

log = logging.getLogger(__name__)

# (session id, first seq, last seq, the ``chats`` frames of those seqs as pushed)
MessageBatch = tuple[int, int, int, bytes]


class MessageLog:
    """Chat messages, in a database file of their own, written from the event loop.

    Only this connection writes that file, so a write never waits for a lock, and a
    batch (everything that arrived in one turn of the loop, in all sessions) is one
    short transaction: no thread hop and no GIL hand-off on the hot path. A session's
    part of a batch is one row of ``chat_batches`` holding its ``chat`` frames as they
    were pushed (migration chat/0002), so a commit costs the same for one message or
    thousands; :meth:`load` decodes them. WAL with ``synchronous=NORMAL``:
    a committed batch survives a crash of the process (not of the machine). The WAL is
    not checkpointed by the writer (that would fsync inside some unlucky commit, on the
    event loop) but by :meth:`checkpoint`, which the hub runs in a worker thread.
    """

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        self.unchecked = 0  # rows written since the last checkpoint
        self._ckpt: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str | Path) -> MessageLog:
        db = await migrate.connect(path, "chat")  # create or upgrade the schema
        await db.close()
        try:
            conn = sqlite3.connect(str(path), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the chat message store {path}: {exc}.") from exc
        return cls(conn, str(path))

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never blocks the writer). Blocking:
        run it in a worker thread, one at a time."""
        if self._ckpt is None:
            self._ckpt = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("checkpoint of %s failed: %s", self.path, exc)

    def append(self, batches: list[MessageBatch]) -> StoreError | None:
        """Store ``batches`` in one transaction; the error (not raised) if that failed."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO chat_batches(session_id, first_seq, last_seq, frames)"
                " VALUES (?, ?, ?, ?)",
                batches,
            )
            self._conn.execute("COMMIT")
            self.unchecked += len(batches)
        except sqlite3.Error as exc:
            log.error("storing %d chat message batches failed: %s", len(batches), exc)
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            return StoreError(f"Chat messages could not be stored: {exc}.")
        return None

    def load(self, session_id: int, *, after: int = 0) -> list[StoredMessage]:
        """The stored messages of a session with a seq above ``after``, in seq order."""
        try:
            old = self._conn.execute(  # rows of migration chat/0001
                "SELECT seq, sender, cid, text, ts FROM chat_messages WHERE session_id = ?"
                " AND seq > ? ORDER BY seq",
                (session_id, after),
            ).fetchall()
            batches = self._conn.execute(
                "SELECT frames FROM chat_batches WHERE session_id = ? AND last_seq > ?"
                " ORDER BY first_seq",
                (session_id, after),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(
                f"Cannot read the chat messages of session {session_id}: {exc}."
            ) from exc
        out = [StoredMessage(*r) for r in old]
        for (frames,) in batches:
            out += (m for m in decode_chat_frames(frames) if m.seq > after)
        return out

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
        self._conn.close()  # the last connection to close checkpoints the rest


def decode_chat_frames(data: bytes) -> list[StoredMessage]:
    """The messages of a stored batch: ``chats`` (or ``chat``) frames, each a 4-byte
    length and a msgpack map (docs/protocol.md)."""
    out, off, end = [], 0, len(data)
    while off + 4 <= end:
        size = int.from_bytes(data[off : off + 4], "big")
        try:
            m = msgpack.unpackb(data[off + 4 : off + 4 + size], raw=False)
            if m["t"] == "chats":
                login, ts, seq = m["login"], m["ts"], m["seq"]
                for i, (cid, text) in enumerate(zip(m["cids"], m["texts"], strict=True)):
                    out.append(StoredMessage(seq + i, login, cid, text, ts))
            else:
                out.append(StoredMessage(m["seq"], m["login"], m["cid"], m["text"], m["ts"]))
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise StoreError(f"A stored chat message is damaged: {exc}.") from exc
        off += 4 + size
    return out
