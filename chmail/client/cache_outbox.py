"""SQL of the outbox and the drafts (tables from migrations/client/0001_cache.sql)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from chmail.client.cache import Cache

QUEUED = "queued"  # waiting for its turn (or for a retry)
SENDING = "sending"  # reserved (older rows); treated like queued
SENT = "sent"  # the SMTP server took it; filing into Sent still to do
DONE = "done"  # sent and filed
FAILED = "failed"  # permanent refusal (5xx); last_error has the server's words
ACTIVE = (QUEUED, SENDING, SENT)

_COLS = (
    "id, account, message_id, sender, recipients, raw, stamped, state, attempts, next_try,"
    " last_error, ch_status, created, updated, filed"
)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    account: str
    message_id: str
    sender: str
    recipients: list[str]
    raw: bytes
    stamped: bytes | None
    state: str
    attempts: int
    next_try: float
    last_error: str
    ch_status: str  # "", "stamped", "unlinked" (sent without X-CH: CH server unreachable)
    created: float
    updated: float
    filed: bool = False  # already in Sent (some recipients took it, others were deferred)

    @property
    def data(self) -> bytes:
        return self.stamped if self.stamped is not None else self.raw


def _item(r: Any) -> OutboxItem:
    return OutboxItem(
        r[0], r[1], r[2], r[3], json.loads(r[4]), bytes(r[5]),
        bytes(r[6]) if r[6] is not None else None, r[7], r[8], r[9], r[10], r[11], r[12], r[13],
        bool(r[14]),
    )  # fmt: skip


async def enqueue(
    cache: Cache, account: str, message_id: str, sender: str, recipients: list[str], raw: bytes
) -> OutboxItem:
    """Queue a mail; the same Message-ID queued twice stays one row (idempotency key)."""
    now = time.time()
    async with cache.transaction() as db:
        await db.execute(
            "INSERT INTO outbox (account, message_id, sender, recipients, raw, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            (account, message_id, sender, json.dumps(recipients), raw, now, now),
        )
    item = await get(cache, message_id)
    assert item is not None
    return item


async def get(cache: Cache, message_id: str) -> OutboxItem | None:
    rows = await cache._all(f"SELECT {_COLS} FROM outbox WHERE message_id = ?", (message_id,))  # noqa: S608
    return _item(rows[0]) if rows else None


async def items(
    cache: Cache, account: str | None = None, states: tuple[str, ...] = ()
) -> list[OutboxItem]:
    where, params = ["1"], []
    if account is not None:
        where.append("account = ?")
        params.append(account)
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        params.extend(states)
    rows = await cache._all(
        f"SELECT {_COLS} FROM outbox WHERE {' AND '.join(where)} ORDER BY id",  # noqa: S608
        params,
    )
    return [_item(r) for r in rows]


async def due(cache: Cache, account: str, now: float, limit: int = 100) -> list[OutboxItem]:
    rows = await cache._all(
        f"SELECT {_COLS} FROM outbox WHERE account = ? AND state IN (?, ?, ?)"  # noqa: S608
        " AND next_try <= ? ORDER BY id LIMIT ?",
        (account, *ACTIVE, now, limit),
    )
    return [_item(r) for r in rows]


async def next_due(cache: Cache, account: str) -> float | None:
    rows = await cache._all(
        "SELECT min(next_try) FROM outbox WHERE account = ? AND state IN (?, ?, ?)",
        (account, *ACTIVE),
    )
    return float(rows[0][0]) if rows and rows[0][0] is not None else None


async def update(cache: Cache, item_id: int, **fields: Any) -> None:
    allowed = {"state", "attempts", "next_try", "last_error", "ch_status", "stamped", "filed"}
    allowed.add("recipients")  # a list, stored as JSON
    if not fields or not set(fields) <= allowed:
        raise ValueError(f"bad outbox fields {sorted(fields)}")
    if "recipients" in fields:
        fields["recipients"] = json.dumps(list(fields["recipients"]))
    sets = ", ".join(f"{k} = ?" for k in fields)
    async with cache.transaction() as db:
        await db.execute(
            f"UPDATE outbox SET {sets}, updated = ? WHERE id = ?",  # noqa: S608 (names checked)
            (*fields.values(), time.time(), item_id),
        )


# ---------------------------------------------------------------- drafts


@dataclass(frozen=True)
class StoredDraft:
    id: int
    account: str
    message_id: str
    fields: dict[str, Any]
    updated: float


async def save_draft(
    cache: Cache, account: str, message_id: str, fields: dict[str, Any], draft_id: int | None
) -> int:
    data = json.dumps(fields, ensure_ascii=False).encode()
    now = time.time()
    async with cache.transaction() as db:
        if draft_id is not None:
            cur = await db.execute(
                "UPDATE drafts SET raw = ?, updated = ? WHERE id = ?", (data, now, draft_id)
            )
            if cur.rowcount:
                return draft_id
        cur = await db.execute(
            "INSERT INTO drafts (account, message_id, raw, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (message_id) DO UPDATE SET raw = excluded.raw, updated = excluded.updated"
            " RETURNING id",
            (account, message_id, data, now),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def drafts(cache: Cache, account: str | None = None) -> list[StoredDraft]:
    rows = await cache._all(
        "SELECT id, account, message_id, raw, updated FROM drafts"
        " WHERE (? IS NULL OR account = ?) ORDER BY updated DESC",
        (account, account),
    )
    return [StoredDraft(r[0], r[1], r[2], json.loads(bytes(r[3])), r[4]) for r in rows]


async def draft(cache: Cache, draft_id: int) -> StoredDraft | None:
    rows = await cache._all(
        "SELECT id, account, message_id, raw, updated FROM drafts WHERE id = ?", (draft_id,)
    )
    return (
        StoredDraft(rows[0][0], rows[0][1], rows[0][2], json.loads(bytes(rows[0][3])), rows[0][4])
        if rows
        else None
    )


async def delete_draft(cache: Cache, draft_id: int) -> None:
    async with cache.transaction() as db:
        await db.execute("DELETE FROM drafts WHERE id = ?", (draft_id,))
