"""All SQL of the CH server's users, table 1 (logins) and counters; table 2 via leasestore.

Small async functions over one aiosqlite connection (``ServerStore.db``), so another
store (PostgreSQL) could stand in. Other server modules (chat sessions, alarms) keep
their own SQL in their own store module over the same ``db`` connection. Table 2 (the
port leases) lives in a file of its own, written from the event loop
(``ServerStore.leasedb``, see leasestore.py); ``leases``/``lease`` read it from there.
Transactions that read before they write start with ``BEGIN IMMEDIATE`` (a deferred one
could fail with "database is locked" when another process wrote in between).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from chmail import migrate
from chmail.chserver.leasestore import LEASE_COUNTER, LEASE_FILE, LeaseStore
from chmail.chserver.ports import Lease
from chmail.errors import ValidationError

DB_FILE = "chserver.sqlite3"
USERS_REMOVED = "users_removed"  # meta counter: bumped by every user removal


@dataclass(frozen=True)
class User:
    login: str
    emails: tuple[str, ...]
    created_at: int


@dataclass(frozen=True)
class LoginRow:
    """A row of table 1."""

    login: str
    host: str
    observed_ip: str
    direct: bool
    last_seen: int
    online: bool


class ServerStore:
    def __init__(self, db: aiosqlite.Connection, path: Path, leasedb: LeaseStore) -> None:
        self.db = db
        self.path = path
        self.leasedb = leasedb

    @classmethod
    async def open(cls, data_dir: Path) -> ServerStore:
        path = data_dir / DB_FILE
        if not path.exists():  # password hashes inside: readable by the owner only
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = await migrate.connect(path, "chserver")
        try:
            store = cls(db, path, await LeaseStore.open(data_dir / LEASE_FILE))
        except BaseException:
            await db.close()
            raise
        try:
            await store._move_old_leases()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        self.leasedb.close()
        await self.db.close()

    # ------------------------------------------------------------------ users

    async def add_user(self, login: str, password_hash: str, emails: list[str], now: int) -> None:
        try:
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.execute(
                "INSERT INTO users(login, password_hash, created_at) VALUES (?, ?, ?)",
                (login, password_hash, now),
            )
            await self.db.executemany(
                "INSERT INTO user_emails(email, login) VALUES (?, ?)",
                [(e, login) for e in emails],
            )
            await self.db.commit()
        except sqlite3.IntegrityError:
            await self.db.rollback()
            if await self.get_hash(login) is not None:
                raise ValidationError(f"A user with the login {login!r} already exists.") from None
            taken = [e for e in emails if await self.login_for_email(e) is not None]
            raise ValidationError(
                f"The address {taken[0] if taken else emails[0]} already belongs to another user."
            ) from None

    async def users(self) -> list[User]:
        async with self.db.execute(
            "SELECT u.login, u.created_at, group_concat(e.email, char(10)) FROM users u"
            " LEFT JOIN user_emails e ON e.login = u.login GROUP BY u.login ORDER BY u.login"
        ) as cur:
            rows = await cur.fetchall()
        return [
            User(str(r[0]), tuple(sorted(str(r[2]).split("\n"))) if r[2] else (), int(r[1]))
            for r in rows
        ]

    async def get_hash(self, login: str) -> str | None:
        async with self.db.execute(
            "SELECT password_hash FROM users WHERE login = ?", (login,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_password(self, login: str, password_hash: str) -> bool:
        cur = await self.db.execute(
            "UPDATE users SET password_hash = ? WHERE login = ?", (password_hash, login)
        )
        await self.db.commit()
        return cur.rowcount > 0

    async def remove_user(self, login: str) -> bool:
        """Delete the user and bump ``users_removed``, which a running server watches
        (it closes the removed user's live links, see core.Core.watch_users)."""
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = await self.db.execute("DELETE FROM users WHERE login = ?", (login,))
            if cur.rowcount > 0:
                await self.db.execute(
                    "INSERT INTO meta(key, value) VALUES (?, 1)"
                    " ON CONFLICT(key) DO UPDATE SET value = value + 1",
                    (USERS_REMOVED,),
                )
            await self.db.commit()
        except BaseException:
            await self.db.rollback()
            raise
        return cur.rowcount > 0

    async def logins(self) -> set[str]:
        """Every login that has an account."""
        async with self.db.execute("SELECT login FROM users") as cur:
            return {str(r[0]) for r in await cur.fetchall()}

    async def login_for_email(self, email: str) -> str | None:
        async with self.db.execute(
            "SELECT login FROM user_emails WHERE email = ?", (email.lower(),)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def emails_of(self, login: str) -> list[str]:
        async with self.db.execute(
            "SELECT email FROM user_emails WHERE login = ? ORDER BY email", (login,)
        ) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    # ------------------------------------------------------------------ table 1

    async def record_login(
        self, login: str, host: str, observed_ip: str, direct: bool, now: int
    ) -> None:
        """S101: the latest advertised host and observed IP replace the previous ones."""
        await self.db.execute(
            "INSERT INTO logins(login, host, observed_ip, direct, last_seen, online)"
            " VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(login) DO UPDATE SET"
            " host = excluded.host, observed_ip = excluded.observed_ip,"
            " direct = excluded.direct, last_seen = excluded.last_seen, online = 1",
            (login, host, observed_ip, int(direct), now),
        )
        await self.db.commit()

    async def set_offline(self, login: str, now: int) -> None:
        await self.db.execute(
            "UPDATE logins SET online = 0, last_seen = ? WHERE login = ?", (now, login)
        )
        await self.db.commit()

    async def reset_online(self, now: int) -> None:
        """At start and stop: nobody is connected, whatever the last run left behind."""
        await self.db.execute(
            "UPDATE logins SET online = 0, last_seen = max(last_seen, ?) WHERE online != 0",
            (now,),
        )
        await self.db.commit()

    async def login_rows(self) -> list[LoginRow]:
        async with self.db.execute(
            "SELECT login, host, observed_ip, direct, last_seen, online FROM logins ORDER BY login"
        ) as cur:
            rows = await cur.fetchall()
        return [
            LoginRow(str(r[0]), str(r[1]), str(r[2]), bool(r[3]), int(r[4]), bool(r[5]))
            for r in rows
        ]

    async def login_row(self, login: str) -> LoginRow | None:
        return next((r for r in await self.login_rows() if r.login == login), None)

    # ------------------------------------------------------------------ table 2

    async def leases(self) -> list[Lease]:
        return self.leasedb.leases()

    async def lease(self, port: int) -> Lease | None:
        return self.leasedb.lease(port)

    async def _move_old_leases(self) -> None:
        """Table 2 lived in chserver.sqlite3 before it got its own file: move its rows
        and counter over (idempotent: a move cut short is finished at the next start)."""
        async with self.db.execute(f"SELECT {_OLD_COLUMNS} FROM ports") as cur:  # noqa: S608
            rows = list(await cur.fetchall())
        reserved = await self.counter(LEASE_COUNTER, old=True)
        if not rows and reserved <= self.leasedb.reserved():
            return
        self.leasedb.adopt(rows, reserved)
        await self.db.execute("DELETE FROM ports")
        await self.db.commit()

    # ------------------------------------------------------------------ counters

    async def counter(self, key: str, *, old: bool = False) -> int:
        """A named counter (0 if never set). ``lease_reserved`` is table 2's and read from
        the lease file, unless ``old`` (where versions before the move kept it)."""
        if key == LEASE_COUNTER and not old:
            return self.leasedb.reserved()
        async with self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])


_OLD_COLUMNS = (
    "port, login, host, lease, message_id, message_ids, recipients, context,"
    " allocated_at, updated_at, expires"
)
