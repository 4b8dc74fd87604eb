"""Migrations: applied once, in order, recorded; a newer database is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from chmail import migrate
from chmail.errors import MigrationError


def make_root(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "migrations"
    (root / "demo").mkdir(parents=True)
    for name, sql in files.items():
        (root / "demo" / name).write_text(sql, encoding="utf-8")
    return root


async def test_applies_in_order_once(tmp_path: Path) -> None:
    """Missing migrations run in numeric order and are not run again on the next open."""
    root = make_root(
        tmp_path,
        {
            "0001_init.sql": "CREATE TABLE t (a INTEGER);",
            "0002_more.sql": "ALTER TABLE t ADD COLUMN b TEXT; INSERT INTO t VALUES (1, 'x');",
        },
    )
    db = tmp_path / "x.sqlite"
    conn = await migrate.connect(db, "demo", root=root)
    async with conn.execute("SELECT version FROM schema_migrations ORDER BY version") as cur:
        assert [r[0] for r in await cur.fetchall()] == [1, 2]
    async with conn.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone()) == ("wal",)
    await conn.close()
    conn = await migrate.connect(db, "demo", root=root)
    async with conn.execute("SELECT count(*) FROM t") as cur:
        assert (await cur.fetchone()) == (1,)  # 0002's INSERT did not run twice
    await conn.close()


async def test_new_migration_is_applied_later(tmp_path: Path) -> None:
    """A migration added after the database was created is applied at the next start."""
    root = make_root(tmp_path, {"0001_init.sql": "CREATE TABLE t (a INTEGER);"})
    db = tmp_path / "x.sqlite"
    await (await migrate.connect(db, "demo", root=root)).close()
    (root / "demo" / "0002_idx.sql").write_text("CREATE INDEX t_a ON t(a);")
    conn = await migrate.connect(db, "demo", root=root)
    assert await migrate.migrate(conn, "demo", root=root) == []
    async with conn.execute("SELECT max(version) FROM schema_migrations") as cur:
        assert (await cur.fetchone()) == (2,)
    await conn.close()


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    """A database written by a newer chmail is refused with a message saying so."""
    root = make_root(tmp_path, {"0001_init.sql": "CREATE TABLE t (a INTEGER);"})
    db = tmp_path / "x.sqlite"
    conn = await migrate.connect(db, "demo", root=root)
    await conn.execute("INSERT INTO schema_migrations(version, name) VALUES (7, '0007_f.sql')")
    await conn.commit()
    await conn.close()
    with pytest.raises(MigrationError, match=r"version 7 .*newer than this chmail knows"):
        await migrate.connect(db, "demo", root=root)


async def test_failed_migration_leaves_nothing(tmp_path: Path) -> None:
    """A broken migration is reported and rolled back; earlier ones stay applied."""
    root = make_root(
        tmp_path,
        {
            "0001_init.sql": "CREATE TABLE t (a INTEGER);",
            "0002_bad.sql": "CREATE TABLE u (a INTEGER); INSERT INTO nowhere VALUES (1);",
        },
    )
    db = tmp_path / "x.sqlite"
    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed"):
        await migrate.connect(db, "demo", root=root)
    conn = await migrate.connect(
        db,
        "demo",
        root=make_root(
            tmp_path / "b",
            {
                "0001_init.sql": "CREATE TABLE t (a INTEGER);",
            },
        ),
    )
    async with conn.execute("SELECT name FROM sqlite_master WHERE name = 'u'") as cur:
        assert await cur.fetchone() is None
    await conn.close()


def test_project_migrations_are_well_formed() -> None:
    """Every database's migration files in the tree load with unique numbers."""
    root = migrate.migrations_root()
    for folder in root.iterdir():
        if folder.is_dir() and any(folder.glob("*.sql")):
            assert migrate.load_migrations(folder.name)
