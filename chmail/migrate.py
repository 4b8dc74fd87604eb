"""Schema migrations: numbered ``.sql`` files per database, applied in order at start.

Layout: ``migrations/<db>/NNNN_name.sql`` (``<db>`` is ``chserver``, ``client`` or
``shop``). Each file runs once, inside one transaction, and is recorded in
``schema_migrations``. A database that records a version this code does not have was
written by a newer chmail: it is refused with a message that says so, rather than
being used by code that does not understand it.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from chmail.errors import MigrationError, StoreError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_root() -> Path:
    """Where the .sql files are: the source tree, or inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("The migrations folder is missing from this installation; reinstall.")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(db: str, root: Path | None = None) -> list[Migration]:
    folder = (root or migrations_root()) / db
    if not folder.is_dir():
        raise MigrationError(f"No migrations for database {db!r} in {folder}.")
    found: list[Migration] = []
    for path in sorted(folder.iterdir()):
        m = _NAME.match(path.name)
        if m is None:
            continue
        found.append(Migration(int(m.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"Two migrations of {db!r} share a number: {versions}.")
    return found


async def connect(path: str | Path, db: str, *, root: Path | None = None) -> aiosqlite.Connection:
    """Open ``path`` (WAL mode, foreign keys on) and bring it to the code's schema."""
    try:
        conn = await aiosqlite.connect(str(path))
    except sqlite3.Error as exc:
        raise StoreError(
            f"Cannot open database {path}: {exc}. Check the path and its rights."
        ) from exc
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await migrate(conn, db, root=root)
    except BaseException:
        await conn.close()
        raise
    return conn


async def migrate(conn: aiosqlite.Connection, db: str, *, root: Path | None = None) -> list[int]:
    """Apply the missing migrations of ``db``; return the versions applied now."""
    migrations = load_migrations(db, root)
    known = {m.version for m in migrations}
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        await conn.commit()
        async with conn.execute("SELECT version, name FROM schema_migrations") as cur:
            applied = {int(r[0]): str(r[1]) for r in await cur.fetchall()}
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{db} database is not a chmail database ({exc}).") from exc
    newer = sorted(v for v in applied if v not in known)
    if newer:
        have = max(known) if known else 0
        raise MigrationError(
            f"This {db} database has schema version {max(newer)} ({applied[max(newer)]}), "
            f"newer than this chmail knows (up to {have}). Upgrade chmail, or use another "
            "data directory."
        )
    done: list[int] = []
    for m in migrations:
        if m.version in applied:
            continue
        try:
            # m.version is an int and m.name matched _NAME ([0-9a-z_.] only): safe to inline.
            await conn.executescript(
                f"BEGIN;\n{m.sql}\n;INSERT INTO schema_migrations(version, name) "  # noqa: S608
                f"VALUES ({m.version}, '{m.name}');\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            await conn.rollback()
            raise MigrationError(f"Migration {db}/{m.name} failed: {exc}.") from exc
        done.append(m.version)
    return done
