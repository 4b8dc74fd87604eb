"""The local mailbox cache (SQLite via aiosqlite): folders, messages, threads, bodies.

Rules:

* Headers and flags are cached at sync; bodies only when a message is opened
  (``set_body``), then kept.
* ``count()`` and unread counts are O(1): triggers keep them in ``folders``.
  ``page()`` walks one index per sort order and reads only ``limit`` rows, so a folder of
  100,000 messages opens as fast as one of 100 (the TUI virtualises its rows).
* Threads follow References / In-Reply-To: every Message-ID seen maps to a thread, and
  two threads that turn out to be one are merged. New rows get their thread (and join
  the search index and address book) in the pass after a sync (cache_ingest.py);
  ``thread()``, the Message-ID look-ups, ``search()`` and ``addresses()`` wait for it,
  a row read before it has ``thread_id`` 0.
* All SQL of the client lives here and in ``cache_*.py``. Writes are serialised by one
  lock so two tasks never share a transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from chmail import config, migrate
from chmail.client import cache_search
from chmail.client.cache_ingest import Ingest
from chmail.client.cache_models import (
    SEEN,
    SORTS,
    Address,
    Folder,
    Message,
    NewMessage,
    PendingOp,
    flags_text,
)
from chmail.errors import StoreError

__all__ = ["Address", "Cache", "Folder", "Message", "NewMessage", "PendingOp", "default_path"]

_FOLDER_COLS = (
    "id, account, name, delimiter, special_use, uidvalidity, uidnext, highestmodseq, total, unread"
)
_MSG_COLS = (
    "m.id, f.account, m.folder_id, f.name, m.uid, m.uidvalidity, m.message_id, m.in_reply_to,"
    " m.refs, m.thread_id, m.from_name, m.from_addr, m.to_addrs, m.cc_addrs, m.subject, m.date,"
    " m.flags, m.size, m.has_ch, m.ch_headers, m.body_text IS NOT NULL, m.attachments"
)
_CHUNK = 500
# SQLite copies the write-ahead log into the database when it passes this many pages
# (default 1,000: 4 MB, about what a 10,000-message header sync writes, so the copy and its
# fsync landed in the middle of the sync). 16,384 pages (64 MB) lets a big sync finish
# first; the indexing pass after it checkpoints (without waiting for readers).
WAL_CHECKPOINT_PAGES = 16_384
SORT_INDEXES = {
    "from": "CREATE INDEX IF NOT EXISTS messages_from ON messages (folder_id, sort_from, date, id)",
    "subject": "CREATE INDEX IF NOT EXISTS messages_subject"
    " ON messages (folder_id, sort_subject, date, id)",
    "size": "CREATE INDEX IF NOT EXISTS messages_size ON messages (folder_id, size, id)",
}  # host parameters per IN (...) list, well under SQLite's 32766


def default_path() -> Path:
    return config.data_dir() / "cache.sqlite3"


def _folder(row: Sequence[Any]) -> Folder:
    return Folder(*row)


def _message(r: Sequence[Any]) -> Message:
    ch = tuple(
        (name, value)
        for name, _, value in (line.partition(": ") for line in r[19].split("\n") if line)
    )
    return Message(
        pk=r[0],
        account=r[1],
        folder_id=r[2],
        folder=r[3],
        uid=r[4],
        uidvalidity=r[5],
        message_id=r[6],
        in_reply_to=r[7],
        references=tuple(r[8].split()),
        thread_id=r[9],
        from_name=r[10],
        from_addr=r[11],
        to=r[12],
        cc=r[13],
        subject=r[14],
        date=r[15],
        flags=frozenset(r[16].split()),
        size=r[17],
        has_ch=bool(r[18]),
        ch_headers=ch,
        has_body=bool(r[20]),
        attachments=r[21],
    )


class Cache(Ingest):
    """One client cache database. Open with ``await Cache.open(path)``; ``await close()``."""

    _sort_ready: set[str]

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        super().__init__(conn, path)
        self._sort_ready = set()

    @classmethod
    async def open(cls, path: str | Path | None = None) -> Cache:
        p = Path(path) if path else default_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = await migrate.connect(p, "client")
        await conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        # The search index's text transform, which the indexing pass and the triggers of
        # migrations/client/0006 call: every connection writing messages needs it.
        await conn.create_function("chm_fts", 1, cache_search.fts_text, deterministic=True)
        return cls(conn, p)

    async def __aenter__(self) -> Cache:
        return self

    # ------------------------------------------------------------------ folders

    async def upsert_folder(
        self, account: str, name: str, *, delimiter: str = "/", special_use: str = ""
    ) -> Folder:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO folders (account, name, delimiter, special_use) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account, name) DO UPDATE SET delimiter = excluded.delimiter,"
                " special_use = excluded.special_use",
                (account, name, delimiter, special_use),
            )
        found = await self.folder_by_name(account, name)
        assert found is not None
        return found

    async def folders(self, account: str | None = None) -> list[Folder]:
        """Folders (INBOX first, then special-use ones, then by name), with counts."""
        where, params = ("WHERE account = ?", (account,)) if account else ("", ())
        rows = await self._all(
            f"SELECT {_FOLDER_COLS} FROM folders {where} ORDER BY account,"  # noqa: S608
            " CASE special_use WHEN 'inbox' THEN 0 WHEN '' THEN 2 ELSE 1 END, name",
            params,
        )
        return [_folder(r) for r in rows]

    async def folder(self, folder_id: int) -> Folder | None:
        rows = await self._all(f"SELECT {_FOLDER_COLS} FROM folders WHERE id = ?", (folder_id,))  # noqa: S608
        return _folder(rows[0]) if rows else None

    async def folder_by_name(self, account: str, name: str) -> Folder | None:
        rows = await self._all(
            f"SELECT {_FOLDER_COLS} FROM folders WHERE account = ? AND name = ?",  # noqa: S608
            (account, name),
        )
        return _folder(rows[0]) if rows else None

    async def folder_by_use(self, account: str, special_use: str) -> Folder | None:
        rows = await self._all(
            f"SELECT {_FOLDER_COLS} FROM folders WHERE account = ? AND special_use = ?"  # noqa: S608
            " ORDER BY id LIMIT 1",
            (account, special_use),
        )
        return _folder(rows[0]) if rows else None

    async def set_folder_state(
        self, folder_id: int, *, uidvalidity: int, uidnext: int = 0, highestmodseq: int = 0
    ) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE folders SET uidvalidity = ?, uidnext = ?, highestmodseq = ?,"
                " synced_at = ? WHERE id = ?",
                (uidvalidity, uidnext, highestmodseq, time.time(), folder_id),
            )

    async def reset_folder(self, folder_id: int, uidvalidity: int) -> None:
        """UIDVALIDITY changed: every cached UID of the folder is void; start again."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM messages WHERE folder_id = ?", (folder_id,))
            await db.execute(
                "UPDATE folders SET uidvalidity = ?, uidnext = 0, highestmodseq = 0,"
                " total = 0, unread = 0 WHERE id = ?",
                (uidvalidity, folder_id),
            )

    async def delete_folder(self, folder_id: int) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM folders WHERE id = ?", (folder_id,))

    # ------------------------------------------------------------------ messages in

    async def update_flags(self, folder_id: int, flags_by_uid: Mapping[int, Iterable[str]]) -> None:
        """Server-side flag changes (from a flag sync) into the cache."""
        rows = []
        for uid, flags in flags_by_uid.items():
            text = flags_text(flags)
            rows.append((text, int(SEEN in text.split()), folder_id, uid))
        async with self.transaction() as db:
            await db.executemany(
                "UPDATE messages SET flags = ?, seen = ? WHERE folder_id = ? AND uid = ?", rows
            )

    async def remove_uids(self, folder_id: int, uids: Iterable[int]) -> None:
        """Messages gone from the server (expunged)."""
        async with self.transaction() as db:
            await db.executemany(
                "DELETE FROM messages WHERE folder_id = ? AND uid = ?",
                [(folder_id, u) for u in uids],
            )

    async def set_body(self, pk: int, raw: bytes, text: str, attachments: int = 0) -> None:
        """Cache a fetched body: raw source plus its text (which joins the search index)."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO bodies (message_pk, raw) VALUES (?, ?)", (pk, raw)
            )
            await db.execute(
                "UPDATE messages SET body_text = ?, attachments = ? WHERE id = ?",
                (text, attachments, pk),
            )

    # ------------------------------------------------------------------ messages out

    async def count(self, folder_id: int) -> int:
        rows = await self._all("SELECT total FROM folders WHERE id = ?", (folder_id,))
        return int(rows[0][0]) if rows else 0

    async def unread(self, folder_id: int) -> int:
        rows = await self._all("SELECT unread FROM folders WHERE id = ?", (folder_id,))
        return int(rows[0][0]) if rows else 0

    async def page(
        self, folder_id: int, offset: int, limit: int, sort: str = "date-desc"
    ) -> list[Message]:
        """Rows ``offset .. offset+limit`` of a folder in ``sort`` order (see SORTS)."""
        order = SORTS.get(sort)
        if order is None:
            raise StoreError(f"Unknown sort {sort!r}; use one of {', '.join(SORTS)}.")
        await self._ensure_sort_index(sort)
        if not sort.startswith(("date", "size")):
            await self.index_pending()  # sort keys of rows stored since the last pass
        # Step 1 walks only the (covering) index; step 2 reads just the rows shown.
        ids = await self._all(
            f"SELECT id FROM messages WHERE folder_id = ? ORDER BY {order}"  # noqa: S608
            " LIMIT ? OFFSET ?",
            (folder_id, max(0, limit), max(0, offset)),
        )
        return await self.get_many([r[0] for r in ids])

    async def _ensure_sort_index(self, sort: str) -> None:
        """Build the index of a rarer sort order the first time it is used (0003)."""
        ddl = SORT_INDEXES.get(sort.rsplit("-", 1)[0])
        if ddl is None or sort in self._sort_ready:
            return
        async with self.transaction() as db:
            await db.execute(ddl)
        self._sort_ready.update(k for k in SORTS if k.startswith(sort.rsplit("-", 1)[0]))

    async def get_many(self, pks: Sequence[int]) -> list[Message]:
        """Messages by primary key, in the order given (missing ones left out)."""
        found: dict[int, Message] = {}
        for i in range(0, len(pks), _CHUNK):
            part = list(pks[i : i + _CHUNK])
            marks = ",".join("?" * len(part))
            rows = await self._all(
                f"SELECT {_MSG_COLS} FROM messages m JOIN folders f ON f.id = m.folder_id"  # noqa: S608
                f" WHERE m.id IN ({marks})",
                part,
            )
            found.update((r[0], _message(r)) for r in rows)
        return [found[pk] for pk in pks if pk in found]

    async def get(self, pk: int) -> Message | None:
        got = await self.get_many([pk])
        return got[0] if got else None

    async def by_uid(self, folder_id: int, uid: int) -> Message | None:
        rows = await self._all(
            f"SELECT {_MSG_COLS} FROM messages m JOIN folders f ON f.id = m.folder_id"  # noqa: S608
            " WHERE m.folder_id = ? AND m.uid = ?",
            (folder_id, uid),
        )
        return _message(rows[0]) if rows else None

    async def by_message_id(self, message_id: str, account: str | None = None) -> Message | None:
        """One cached copy of the mail with this Message-ID (the first stored), or None."""
        found = await self.all_by_message_id(message_id, account)
        return found[0] if found else None

    async def all_by_message_id(self, message_id: str, account: str | None = None) -> list[Message]:
        """Every cached copy (one per folder it is in) of the mail with this Message-ID."""
        mid = message_id if message_id.startswith("<") else f"<{message_id}>"
        await self.index_pending()  # thread_ids of rows stored since the last pass
        rows = await self._all(
            f"SELECT {_MSG_COLS} FROM messages m JOIN folders f ON f.id = m.folder_id"  # noqa: S608
            " WHERE m.thread_id = (SELECT thread_id FROM thread_ids WHERE message_id = ?)"
            " AND m.message_id = ? AND (? IS NULL OR f.account = ?) ORDER BY m.id",
            (mid, mid, account, account),
        )
        return [_message(r) for r in rows]

    async def thread(self, thread_id: int) -> list[Message]:
        """Every cached message of a thread, oldest first."""
        await self.index_pending()  # thread ids of rows stored since the last pass
        rows = await self._all(
            f"SELECT {_MSG_COLS} FROM messages m JOIN folders f ON f.id = m.folder_id"  # noqa: S608
            " WHERE m.thread_id = ? ORDER BY m.date, m.id",
            (thread_id,),
        )
        return [_message(r) for r in rows]

    async def body(self, pk: int) -> bytes | None:
        """The cached raw source of a message, or None if not fetched yet."""
        rows = await self._all("SELECT raw FROM bodies WHERE message_pk = ?", (pk,))
        return bytes(rows[0][0]) if rows else None

    async def uid_flags(self, folder_id: int) -> dict[int, frozenset[str]]:
        """UID -> flags of every cached message of a folder (for a full flag sync)."""
        rows = await self._all("SELECT uid, flags FROM messages WHERE folder_id = ?", (folder_id,))
        return {r[0]: frozenset(r[1].split()) for r in rows}

    async def max_uid(self, folder_id: int) -> int:
        rows = await self._all("SELECT max(uid) FROM messages WHERE folder_id = ?", (folder_id,))
        return int(rows[0][0] or 0) if rows else 0

    # ------------------------------------------------------------------ search & completion

    async def search(
        self,
        query: str,
        limit: int = 50,
        *,
        account: str | None = None,
        folder_id: int | None = None,
    ) -> list[Message]:
        """Newest first. Words match as prefixes; ``from:``, ``to:``, ``subject:``,
        ``body:`` limit a word to a field; ``is:unread``, ``is:flagged``, ``has:chat``,
        ``"a phrase"``."""
        await self.index_pending()
        pks = await cache_search.search_ids(
            self.conn, query, limit, account=account, folder_id=folder_id
        )
        return await self.get_many(pks)

    async def addresses(self, prefix: str, limit: int = 10) -> list[Address]:
        """Address completion: addresses or names starting with ``prefix``, most used first."""
        await self.index_pending()  # addresses of the last synced batches
        return await cache_search.addresses(self.conn, prefix, limit)

    async def note_sent(self, addrs: Iterable[tuple[str, str]]) -> None:
        """Remember addresses the user wrote to (completion ranks them higher)."""
        async with self.transaction() as db:
            await cache_search.note_pairs(db, list(addrs), weight=5)
