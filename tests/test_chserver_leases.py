"""Table 2 in its own file (leases.sqlite3): moved from older data, checkpointed, exact JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from chmail import migrate
from chmail import protocol as p
from chmail.chserver.core import CHECKPOINT_EVERY
from chmail.chserver.keys import ensure_data_dir
from chmail.chserver.leasestore import LEASE_FILE, _json_list
from chmail.chserver.store import DB_FILE
from tests.fixtures.chserver import DEADLINE, RunningServer, ServerFactory
from tests.test_chserver_cli import run

OLD_ROW = (
    42007, "alice", "ch.test", 77, "<old@example.org>", '["<old@example.org>"]',
    '["bob@example.org"]', "", 1_700_000_000, 1_700_000_000, 4_000_000_000,
)  # fmt: skip


async def test_rows_of_the_old_table_2_are_moved(
    chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """A data dir whose table 2 is in chserver.sqlite3 (older versions) keeps its leases
    and its lease numbering after the move to leases.sqlite3."""
    data = ensure_data_dir(tmp_path / "d")
    db = await migrate.connect(data / DB_FILE, "chserver")  # the layout before the move
    await db.execute("INSERT INTO ports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", OLD_ROW)
    await db.execute("INSERT INTO meta(key, value) VALUES ('lease_reserved', 2048)")
    await db.commit()
    await db.close()
    srv = await chserver_factory(data_dir=data)
    old = srv.server.pool.get(42007)
    assert old is not None
    assert (old.login, old.lease, old.recipients) == ("alice", 77, ("bob@example.org",))
    await srv.add_user("alice")
    async with srv.link("alice") as link:
        chat = await link.alloc_port("<new@example.org>", ["carol@example.org"])
    assert chat.lease > 2048  # numbering resumes above what the old file reserved
    rc, out, err = await run("tables", "--json", "--data", str(data))
    assert rc == 0, err
    ports = {row["port"]: row for row in json.loads(out)["ports"]}
    assert ports[42007]["message_id"] == "<old@example.org>"
    assert ports[chat.port]["lease"] == chat.lease
    # nothing is left behind in the old table to be moved twice
    with contextlib.closing(sqlite3.connect(data / DB_FILE)) as conn:
        assert conn.execute("SELECT count(*) FROM ports").fetchone() == (0,)


async def test_lease_file_is_checkpointed_while_serving(
    chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """The WAL of leases.sqlite3 is copied into the file while the server runs (a worker
    thread checkpoints it), so it does not grow without bound."""
    srv = await chserver_factory(ports="42000-42999")
    await srv.add_user("alice")
    count = CHECKPOINT_EVERY + 10
    async with srv.link("alice") as link:
        for i in range(count):  # one at a time: each its own commit
            await link.alloc_port(f"<c{i}@example.org>", ["bob@example.org"])

    def in_main_file() -> int:
        # immutable=1 reads the database file alone, ignoring the WAL (and its locks: a
        # read while the checkpoint is writing the file may see it torn; then look again)
        uri = f"file:{srv.data_dir / LEASE_FILE}?immutable=1"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
                return int(conn.execute("SELECT count(*) FROM ports").fetchone()[0])
        except sqlite3.DatabaseError:
            return 0

    async with asyncio.timeout(DEADLINE):
        while in_main_file() < CHECKPOINT_EVERY:
            await asyncio.sleep(0.02)


@given(st.lists(st.text(max_size=12), max_size=5))
def test_json_list_is_json_dumps(values: list[str]) -> None:
    """The lease rows' JSON lists are byte for byte what json.dumps writes."""
    assert _json_list(tuple(values)) == json.dumps(values)


async def test_alloc_not_committed_is_answered_with_an_error(chserver: RunningServer) -> None:
    """When table 2 cannot be written (another process holds its write lock) the alloc is
    answered with an internal error, not a lease; the retry once the file is free is."""
    await chserver.add_user("alice")
    client = await chserver.raw("alice")
    blocker = sqlite3.connect(chserver.data_dir / LEASE_FILE, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        reply = await client.request(p.Alloc(message_id="<x@example.org>", recipients=["b@c.d"]))
        assert isinstance(reply, p.Error), reply
        assert reply.code == p.E_INTERNAL
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    reply = await client.request(p.Alloc(message_id="<x@example.org>", recipients=["b@c.d"]))
    assert isinstance(reply, p.Allocated), reply
    stored = await chserver.store.lease(reply.port)
    assert stored is not None
    assert (stored.lease, stored.message_id) == (reply.lease, "<x@example.org>")
