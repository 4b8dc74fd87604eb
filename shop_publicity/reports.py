"""Campaign reports, and the audited member export (admin role only).

The export is the one way the whole member DB leaves the shop, so it asks for an admin
login (``operators add LOGIN --role admin``) and writes who, when and how many to the
audit log *before* the first row is written. Operators never get it: what they see of a
member during a chat is ``Member.chat_profile()``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from pathlib import Path
from typing import Any

from chmail.errors import ShopError
from shop_publicity import board as boardmod
from shop_publicity import campaigns
from shop_publicity.store import Store

EXPORT_COLUMNS = (
    "email",
    "name",
    "consent",
    "login",
    "age_band",
    "job",
    "hobbies",
    "interests",
    "lang",
    "unsubscribed_at",
)


async def export_members(store: Store, actor: str, out: str | None) -> int:
    role = await store.operator_role(actor)
    if role != "admin":
        await store.audit(actor, role or "none", "members.export.refused", "")
        raise ShopError(
            f"{actor!r} is not an admin; only an admin may export members "
            "(`chmail-shop operators add LOGIN --role admin`)."
        )
    total = await store.count_members()
    await store.audit(actor, role, "members.export", f"{total} members to {out or 'stdout'}")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(EXPORT_COLUMNS)
    n = 0
    async for mem in store.export_members():
        w.writerow(
            [
                mem.email,
                mem.name,
                "yes" if mem.consent else "no",
                mem.login,
                mem.age_band,
                mem.job,
                ";".join(mem.hobbies),
                ";".join(mem.interests),
                mem.lang,
                mem.unsubscribed_at or "",
            ]
        )
        n += 1
    if out:
        try:
            await asyncio.to_thread(Path(out).write_text, buf.getvalue(), encoding="utf-8")
        except OSError as exc:
            raise ShopError(f"Cannot write {out}: {exc.strerror}.") from exc
    else:
        sys.stdout.write(buf.getvalue())
    return n


async def report(store: Store, cid: int) -> dict[str, Any]:
    status = await campaigns.status(store, cid)
    b = boardmod.Board()
    await b.catch_up(store, cid)
    return {**status, "board": b.figures(cid)}


def render(data: dict[str, Any]) -> str:
    b = data["board"]
    median = "-" if b["median_answer_s"] is None else f"{b['median_answer_s']:.1f} s"
    lines = [
        f"Campaign {data['campaign']}: {data['name']} ({data['status']})",
        f"  recipients   {data['recipients']}",
        f"  sent         {data['sent']}",
        f"  failed       {data['failed']}",
        f"  skipped      {data['skipped']}",
        f"  to go        {data['pending'] + data['sending']}",
        f"  unsubscribed {b['unsubscribed']}",
        f"  chats asked  {b['chats_asked']}  answered {b['chats_answered']}"
        f"  waiting {b['waiting_now']}",
        f"  median time to answer {median}",
        f"  response rate {100 * b['response_rate']:.1f}%",
    ]
    if data["uncertain_resent"]:
        lines.append(f"  resent after a crash (same Message-ID): {data['uncertain_resent']}")
    for f in data["failures"]:
        lines.append(f"  failed: {f['email']}: {f['error']}")
    return "\n".join(lines)
