"""SQL of the drafts' server copies (columns from migrations/client/0005_draft_copies.sql).

The drafts themselves (what the user typed) are written by cache_outbox; this module only
reads which drafts changed since their last server copy and records where a copy is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chmail.client.cache import Cache


@dataclass(frozen=True)
class DraftCopy:
    id: int
    message_id: str
    fields: dict[str, Any]
    updated: float  # the version to copy
    server_folder: str  # where the previous copy is ("" and 0: none)
    server_uid: int


async def dirty(cache: Cache, account: str) -> list[DraftCopy]:
    """Drafts of ``account`` whose server copy is missing or older than the draft."""
    rows = await cache._all(
        "SELECT id, message_id, raw, updated, server_folder, server_uid FROM drafts"
        " WHERE account = ? AND updated > mirrored ORDER BY updated",
        (account,),
    )
    return [DraftCopy(r[0], r[1], json.loads(bytes(r[2])), r[3], r[4], r[5]) for r in rows]


async def set_copy(cache: Cache, draft_id: int, folder: str, uid: int, version: float) -> bool:
    """Record the server copy of version ``version``; False if the draft is gone."""
    async with cache.transaction() as db:
        cur = await db.execute(
            "UPDATE drafts SET server_folder = ?, server_uid = ?, mirrored = ? WHERE id = ?",
            (folder, uid, version, draft_id),
        )
        return bool(cur.rowcount)


async def copy_of(cache: Cache, draft_id: int) -> tuple[str, int] | None:
    """Where the server copy of a draft is, if it has one."""
    rows = await cache._all(
        "SELECT server_folder, server_uid FROM drafts WHERE id = ? AND server_uid > 0",
        (draft_id,),
    )
    return (rows[0][0], rows[0][1]) if rows else None
