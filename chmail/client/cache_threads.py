"""Threads of the cache (References / In-Reply-To), computed on the SQLite thread by the
pass that follows a sync (``Ingest.index_pending``), for the rows stored since the last one.

Every Message-ID seen, a message's own or one it refers to, maps to a thread
(``thread_ids``). A new message joins the thread of any id it shares; when its ids span
two threads, they merge into the older one. Replies that arrive before their parent join
it too, because the parent's id was recorded when the reply named it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

_CHUNK = 500


def thread_keys(message_id: str, refs: str, in_reply_to: str) -> list[str]:
    """The Message-IDs that tie a stored row to its thread: its own first."""
    return [k for k in (message_id, *refs.split(), in_reply_to) if k]


def assign(db: sqlite3.Connection, keys_of: Sequence[list[str]]) -> list[int]:
    """Thread id for each message, given its ``thread_keys()`` (writes thread_ids, and merges
    threads of rows already stored)."""
    wanted = list({k for keys in keys_of for k in keys})
    known: dict[str, int] = {}
    for i in range(0, len(wanted), _CHUNK):
        part = wanted[i : i + _CHUNK]
        marks = ",".join("?" * len(part))
        cur = db.execute(
            f"SELECT message_id, thread_id FROM thread_ids WHERE message_id IN ({marks})",  # noqa: S608
            part,
        )
        known.update({r[0]: r[1] for r in cur.fetchall()})
    # Thread ids come from thread_ids itself (its thread_id index answers max() at once);
    # the threads table is not written per thread: nothing reads a row per thread.
    row = db.execute("SELECT coalesce(max(thread_id), 0) FROM thread_ids").fetchone()
    next_id = (row[0] if row else 0) + 1
    merges: list[tuple[int, int]] = []
    changed: dict[str, int] = {}
    out: list[int] = []
    for keys in keys_of:
        found = {known[k] for k in keys if k in known}
        if not found:
            tid = next_id
            next_id += 1
        else:
            tid = min(found)
            for other in found - {tid}:
                merges.append((tid, other))
                for k, v in known.items():
                    if v == other:
                        known[k] = changed[k] = tid
        for k in keys:
            if known.get(k) != tid:
                known[k] = changed[k] = tid
        out.append(tid)
    for tid, other in merges:
        db.execute("UPDATE messages SET thread_id = ? WHERE thread_id = ?", (tid, other))
        db.execute("UPDATE thread_ids SET thread_id = ? WHERE thread_id = ?", (tid, other))
    db.executemany(
        "INSERT OR REPLACE INTO thread_ids (message_id, thread_id) VALUES (?, ?)",
        list(changed.items()),
    )
    # Rows of this batch that a later merge re-pointed take the surviving id.
    return [
        known.get(keys[0], tid) if keys else tid for keys, tid in zip(keys_of, out, strict=True)
    ]
