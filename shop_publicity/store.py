"""The shop database: the back office's SQL lives here and in store_sending.py.

Small async methods over one aiosqlite connection (WAL). Writes that belong together run
in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from chmail import migrate
from chmail.errors import StoreError
from shop_publicity import models as m
from shop_publicity.store_rows import MEMBER_COLS as _MEMBER_COLS
from shop_publicity.store_rows import member_row as _member
from shop_publicity.store_rows import split_list as _split
from shop_publicity.store_sending import SendingStore


class Store(SendingStore):
    """The shop DB: members, products, operators, campaigns, audit (this module) and the
    sending side: recipients, events, chats (store_sending.py)."""

    @classmethod
    async def open(cls, data_dir: str | Path) -> Store:
        folder = Path(data_dir)
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the data folder {folder}: {exc.strerror}.") from exc
        path = folder / "shop.sqlite3"
        return cls(await migrate.connect(path, "shop"), path)

    async def close(self) -> None:
        await self.close_writer()
        await self.conn.close()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self.conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self.conn.execute(sql, args) as cur:
            return await cur.fetchone()

    # ------------------------------------------------------------------ settings

    async def setting(self, key: str, default: str | None = None) -> str | None:
        row = await self._one("SELECT value FROM settings WHERE key = ?", (key,))
        return str(row[0]) if row else default

    async def setting_init(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set; return the stored value either way."""
        await self.conn.execute(
            "INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)", (key, value)
        )
        await self.conn.commit()
        got = await self.setting(key)
        assert got is not None
        return got

    # ------------------------------------------------------------------ members

    async def upsert_members(self, rows: Iterable[m.MemberIn]) -> tuple[int, int]:
        """Insert new members, update known ones (by e-mail). Returns (added, updated).

        Works in chunks (a few statements per 500 rows, one transaction for all), so a
        100,000-line file is not 300,000 round trips to the database thread.
        """
        now = time.time()
        added = updated = 0
        todo = list(rows)
        try:
            for start in range(0, len(todo), 500):
                chunk = todo[start : start + 500]
                ids = await self._ids_by_email([r.email for r in chunk])
                values = {
                    r.email.lower(): (
                        r.name,
                        r.login or None,
                        int(r.consent),
                        r.age_band,
                        r.job,
                        ", ".join(r.hobbies),
                        r.lang,
                    )
                    for r in chunk
                }
                new = [r for r in chunk if r.email.lower() not in ids]
                old = [r for r in chunk if r.email.lower() in ids]
                if new:
                    await self.conn.executemany(
                        "INSERT INTO members(name, login, consent, age_band, job, hobbies, lang,"
                        " email, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        [(*values[r.email.lower()], r.email, now, now) for r in new],
                    )
                    added += len(new)
                if old:
                    cur = await self.conn.executemany(
                        "UPDATE members SET name=?, login=?, consent=?, age_band=?, job=?,"
                        " hobbies=?, lang=?, updated_at=? WHERE id=? AND (name IS NOT ? OR"
                        " login IS NOT ? OR consent IS NOT ? OR age_band IS NOT ? OR"
                        " job IS NOT ? OR hobbies IS NOT ? OR lang IS NOT ?)",
                        [
                            (
                                *values[r.email.lower()],
                                now,
                                ids[r.email.lower()],
                                *values[r.email.lower()],
                            )
                            for r in old
                        ],
                    )
                    updated += max(0, cur.rowcount)
                if any(r.interests for r in chunk):
                    ids = await self._ids_by_email([r.email for r in chunk if r.interests])
                    await self.conn.executemany(
                        "INSERT OR IGNORE INTO member_interests(member_id, interest, source,"
                        " tagged_at) VALUES (?, ?, 'import', ?)",
                        [(ids[r.email.lower()], i, now) for r in chunk for i in r.interests],
                    )
            await self.conn.commit()
        except sqlite3.Error as exc:
            await self.conn.rollback()
            raise StoreError(f"Could not save the members: {exc}.") from exc
        return added, updated

    async def _ids_by_email(self, emails: Sequence[str]) -> dict[str, int]:
        marks = ",".join("?" * len(emails))
        rows = await self._all(
            f"SELECT id, email FROM members WHERE email IN ({marks})",  # noqa: S608
            list(emails),
        )
        return {str(r[1]).lower(): int(r[0]) for r in rows}

    async def interests(self, member_id: int) -> tuple[str, ...]:
        rows = await self._all(
            "SELECT interest FROM member_interests WHERE member_id = ? ORDER BY interest",
            (member_id,),
        )
        return tuple(str(r[0]) for r in rows)

    async def member(self, key: str | int) -> m.Member | None:
        """A member by id, e-mail address or CH login."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            row = await self._one(f"SELECT {_MEMBER_COLS} FROM members m WHERE id = ?", (key,))  # noqa: S608
        else:
            row = await self._one(
                f"SELECT {_MEMBER_COLS} FROM members m WHERE email = ? OR login = ?"  # noqa: S608
                " ORDER BY email = ? DESC LIMIT 1",
                (key, key, key),
            )
        if row is None:
            return None
        return _member(row, await self.interests(int(row[0])))

    async def members(self, *, limit: int = 1000, offset: int = 0) -> list[m.Member]:
        rows = await self._all(
            f"SELECT {_MEMBER_COLS}, (SELECT group_concat(interest, ',') FROM"  # noqa: S608
            " member_interests i WHERE i.member_id = m.id) FROM members m ORDER BY id"
            " LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_member(r, tuple(sorted(_split(str(r[10] or ""))))) for r in rows]

    async def count_members(self) -> int:
        row = await self._one("SELECT count(*) FROM members")
        return int(row[0])

    async def tag_interest(self, member_id: int, interest: str, operator: str) -> bool:
        cur = await self.conn.execute(
            "INSERT OR IGNORE INTO member_interests(member_id, interest, source, tagged_by,"
            " tagged_at) VALUES (?, ?, 'chat', ?, ?)",
            (member_id, interest, operator, time.time()),
        )
        await self.conn.commit()
        return cur.rowcount > 0

    async def unsubscribe(self, campaign_id: int, member_id: int) -> bool:
        """Record an unsubscribe; False when the member had already left (idempotent)."""
        now = time.time()
        cur = await self.conn.execute(
            "UPDATE members SET unsubscribed_at = ?, updated_at = ? WHERE id = ?"
            " AND unsubscribed_at IS NULL",
            (now, now, member_id),
        )
        changed = cur.rowcount > 0
        if changed:
            await self._event(campaign_id, m.EV_UNSUBSCRIBED, member_id, now, {})
        await self.conn.commit()
        return changed

    async def segment_member_ids(self, seg: m.Segment) -> list[tuple[int, str]]:
        """(id, email) of members with consent, still subscribed, matching ``seg``."""
        where = ["m.consent = 1", "m.unsubscribed_at IS NULL"]
        args: list[Any] = []

        def any_of(column: str, values: tuple[str, ...]) -> None:
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(values)

        if seg.age_bands:
            any_of("m.age_band", seg.age_bands)
        if seg.jobs:
            any_of("m.job", seg.jobs)
        if seg.langs:
            any_of("m.lang", seg.langs)
        if seg.hobbies:
            where.append(
                "("
                + " OR ".join(
                    "(',' || replace(m.hobbies, ', ', ',') || ',') LIKE ?" for _ in seg.hobbies
                )
                + ")"
            )
            args.extend(f"%,{h},%" for h in seg.hobbies)
        if seg.interests:
            marks = ",".join("?" * len(seg.interests))
            where.append(
                f"EXISTS (SELECT 1 FROM member_interests i WHERE i.member_id = m.id"  # noqa: S608
                f" AND i.interest IN ({marks}))"
            )
            args.extend(seg.interests)
        sql = f"SELECT m.id, m.email FROM members m WHERE {' AND '.join(where)} ORDER BY m.id"  # noqa: S608
        return [(int(r[0]), str(r[1])) for r in await self._all(sql, args)]

    async def export_members(self) -> AsyncIterator[m.Member]:
        offset = 0
        while True:
            page = await self.members(limit=500, offset=offset)
            if not page:
                return
            for mem in page:
                yield mem
            offset += len(page)

    # ------------------------------------------------------------------ products

    async def upsert_product(self, p: m.Product) -> None:
        await self.conn.execute(
            "INSERT INTO products(sku, title, description, price, image_url, landing_url,"
            " created_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(sku) DO UPDATE SET"
            " title=excluded.title, description=excluded.description, price=excluded.price,"
            " image_url=excluded.image_url, landing_url=excluded.landing_url",
            (p.sku, p.title, p.description, p.price, p.image_url, p.landing_url, time.time()),
        )
        await self.conn.commit()

    async def product(self, sku: str) -> m.Product | None:
        row = await self._one(
            "SELECT sku, title, description, price, image_url, landing_url FROM products"
            " WHERE sku = ?",
            (sku,),
        )
        return m.Product(*row) if row else None

    async def products(self) -> list[m.Product]:
        rows = await self._all(
            "SELECT sku, title, description, price, image_url, landing_url FROM products"
            " ORDER BY sku"
        )
        return [m.Product(*r) for r in rows]

    # ------------------------------------------------------------------ operators

    async def add_operator(self, login: str, role: str) -> None:
        await self.conn.execute(
            "INSERT INTO operators(login, role, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(login) DO UPDATE SET role = excluded.role",
            (login, role, time.time()),
        )
        await self.conn.commit()

    async def operator_role(self, login: str) -> str | None:
        row = await self._one("SELECT role FROM operators WHERE login = ?", (login,))
        return str(row[0]) if row else None

    async def operators(self) -> list[tuple[str, str]]:
        return [
            (str(r[0]), str(r[1]))
            for r in await self._all("SELECT login, role FROM operators ORDER BY login")
        ]

    async def set_canned(self, key: str, text: str) -> None:
        await self.conn.execute(
            "INSERT INTO canned_replies(key, text) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET text = excluded.text",
            (key, text),
        )
        await self.conn.commit()

    async def canned(self) -> list[tuple[str, str]]:
        return [
            (str(r[0]), str(r[1]))
            for r in await self._all("SELECT key, text FROM canned_replies ORDER BY key")
        ]

    # ------------------------------------------------------------------ campaigns

    async def create_campaign(
        self,
        *,
        name: str,
        subject_tpl: str,
        body_tpl: str,
        sku: str | None,
        lang: str,
        segment: m.Segment,
        from_addr: str,
        pool: Sequence[str],
        secret: str,
    ) -> int:
        cur = await self.conn.execute(
            "INSERT INTO campaigns(name, subject_tpl, body_tpl, sku, lang, segment, from_addr,"
            " secret, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                name,
                subject_tpl,
                body_tpl,
                sku,
                lang,
                json.dumps(segment.to_json()),
                from_addr,
                secret,
                time.time(),
            ),
        )
        cid = int(cur.lastrowid or 0)
        await self.conn.executemany(
            "INSERT OR IGNORE INTO campaign_pool(campaign_id, login) VALUES (?, ?)",
            [(cid, login) for login in pool],
        )
        await self.conn.commit()
        return cid

    async def campaign(self, cid: int) -> m.Campaign | None:
        row = await self._one(
            "SELECT id, name, subject_tpl, body_tpl, sku, lang, segment, from_addr, status,"
            " pause_reason, secret, created_at, started_at, finished_at FROM campaigns"
            " WHERE id = ?",
            (cid,),
        )
        if row is None:
            return None
        pool = tuple(
            str(r[0])
            for r in await self._all(
                "SELECT login FROM campaign_pool WHERE campaign_id = ? ORDER BY login", (cid,)
            )
        )
        return m.Campaign(
            id=int(row[0]),
            name=row[1],
            subject_tpl=row[2],
            body_tpl=row[3],
            sku=row[4],
            lang=row[5],
            segment=m.Segment.from_json(json.loads(row[6])),
            from_addr=row[7],
            status=row[8],
            pause_reason=row[9],
            secret=row[10],
            pool=pool,
            created_at=row[11],
            started_at=row[12],
            finished_at=row[13],
        )

    async def campaign_ids(self) -> list[int]:
        return [int(r[0]) for r in await self._all("SELECT id FROM campaigns ORDER BY id")]

    async def campaign_status(self, cid: int) -> tuple[str, str]:
        row = await self._one("SELECT status, pause_reason FROM campaigns WHERE id = ?", (cid,))
        if row is None:
            raise StoreError(f"There is no campaign {cid}.")
        return str(row[0]), str(row[1])

    async def set_status(self, cid: int, status: str, reason: str = "") -> None:
        now = time.time()
        await self.conn.execute(
            "UPDATE campaigns SET status = ?, pause_reason = ?,"
            " finished_at = CASE WHEN ? = 'done' THEN ? ELSE finished_at END WHERE id = ?",
            (status, reason, status, now, cid),
        )
        if status == m.PAUSED:
            await self._event(cid, m.EV_PAUSED, None, now, {"reason": reason})
        await self.conn.commit()

    # ------------------------------------------------------------------ audit

    async def audit(self, actor: str, role: str, action: str, detail: str) -> None:
        await self.conn.execute(
            "INSERT INTO audit_log(at, actor, role, action, detail) VALUES (?,?,?,?,?)",
            (time.time(), actor, role, action, detail),
        )
        await self.conn.commit()

    async def audit_entries(self) -> list[tuple[float, str, str, str, str]]:
        rows = await self._all("SELECT at, actor, role, action, detail FROM audit_log ORDER BY id")
        return [(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]
