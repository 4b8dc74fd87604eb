"""The client cache: folders, paging, counts, flags, threads, search, completion."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chmail.client.cache import Cache, NewMessage
from chmail.client.cache_search import fts_query


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "cache.sqlite3")
    yield c
    await c.close()


def _msg(uid: int, **kw: object) -> NewMessage:
    base: dict[str, object] = {
        "uid": uid,
        "message_id": f"<m{uid}@example.org>",
        "from_name": f"Sender {uid % 3}",
        "from_addr": f"s{uid % 3}@example.org",
        "to": "me@example.org",
        "subject": f"subject {uid}",
        "date": 1_700_000_000 + uid,
    }
    base.update(kw)
    return NewMessage(**base)  # type: ignore[arg-type]


async def test_counts_follow_inserts_flags_and_deletes(cache: Cache) -> None:
    """count() and unread() stay right through insert, flag change, re-sync and delete."""
    f = await cache.upsert_folder("acc", "INBOX", special_use="inbox")
    await cache.add_messages(
        f.id, [_msg(i, flags=("\\Seen",) if i % 2 else ()) for i in range(1, 11)]
    )
    assert (await cache.count(f.id), await cache.unread(f.id)) == (10, 5)
    await cache.update_flags(f.id, {2: ["\\Seen"]})
    assert await cache.unread(f.id) == 4
    await cache.add_messages(f.id, [_msg(3)])  # re-sync of a known UID refreshes flags only
    assert (await cache.count(f.id), await cache.unread(f.id)) == (10, 5)
    await cache.remove_uids(f.id, [1, 4])
    assert (await cache.count(f.id), await cache.unread(f.id)) == (8, 4)
    folders = await cache.folders("acc")
    assert folders[0].total == 8


async def test_page_orders_and_slices(cache: Cache) -> None:
    """page() returns the requested slice in each sort order."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(f.id, [_msg(i) for i in range(1, 101)])
    newest = await cache.page(f.id, 0, 10)
    assert [m.uid for m in newest] == list(range(100, 90, -1))
    middle = await cache.page(f.id, 50, 5, "date-asc")
    assert [m.uid for m in middle] == [51, 52, 53, 54, 55]
    by_size = await cache.page(f.id, 0, 3, "subject-asc")
    assert [m.subject for m in by_size] == ["subject 1", "subject 10", "subject 100"]
    assert await cache.page(f.id, 200, 10) == []


async def test_page_uses_an_index(cache: Cache) -> None:
    """Every sort order of page() is served by an index, never a full table scan."""
    from chmail.client.cache_models import SORTS

    f = await cache.upsert_folder("acc", "INBOX")
    for name, order in SORTS.items():
        await cache.page(f.id, 0, 1, name)  # rarer sort orders build their index on first use
        sql = "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE folder_id = 1 ORDER BY " + order  # noqa: S608
        async with cache.conn.execute(sql + " LIMIT 50 OFFSET 10") as cur:
            plan = " ".join(str(r[3]) for r in await cur.fetchall())
        assert "COVERING INDEX" in plan, (order, plan)
        assert "TEMP B-TREE" not in plan, (order, plan)


async def test_threads_join_by_references_in_any_order(cache: Cache) -> None:
    """A reply arriving before its parent still ends in the same thread."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(f.id, [_msg(2, references=["<m1@example.org>"])])
    await cache.add_messages(f.id, [_msg(5, message_id="<other@x>")])
    await cache.add_messages(f.id, [_msg(1)])
    await cache.add_messages(f.id, [_msg(3, in_reply_to="<m2@example.org>")])
    await cache.index_pending()  # thread ids are given by the pass after storing
    rows = {m.uid: m for m in await cache.page(f.id, 0, 10)}
    assert rows[1].thread_id == rows[2].thread_id == rows[3].thread_id
    assert rows[5].thread_id != rows[1].thread_id
    assert [m.uid for m in await cache.thread(rows[1].thread_id)] == [1, 2, 3]


async def test_threads_merge_when_a_message_links_two(cache: Cache) -> None:
    """A message that refers to two separate threads merges them."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(f.id, [_msg(1), _msg(2)])
    await cache.add_messages(f.id, [_msg(3, references=["<m1@example.org>", "<m2@example.org>"])])
    await cache.index_pending()
    rows = {m.uid: m for m in await cache.page(f.id, 0, 10)}
    assert rows[1].thread_id == rows[2].thread_id == rows[3].thread_id


async def test_search_fields_filters_and_bodies(cache: Cache) -> None:
    """Search matches prefixes, limits words to fields, filters, and finds cached bodies."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(
        f.id,
        [
            _msg(1, subject="Invoice for March", from_addr="billing@shop.example"),
            _msg(2, subject="Lunch?", flags=("\\Seen",)),
            _msg(3, subject="회의 일정 안내", from_name="김민수"),
        ],
    )
    assert [m.uid for m in await cache.search("invo")] == [1]
    assert [m.uid for m in await cache.search("from:billing")] == [1]
    assert await cache.search("subject:billing") == []
    assert [m.uid for m in await cache.search("회의")] == [3]
    assert [m.uid for m in await cache.search("김민수")] == [3]
    assert [m.uid for m in await cache.search("is:unread")] == [3, 1]
    lunch = (await cache.search("lunch"))[0]
    await cache.set_body(lunch.pk, b"raw", "we meet at the noodle bar")
    assert [m.uid for m in await cache.search("noodle")] == [2]
    assert await cache.body(lunch.pk) == b"raw"
    assert (await cache.get(lunch.pk)).has_body  # type: ignore[union-attr]


async def test_cjk_words_are_found_inside_unspaced_text(cache: Cache) -> None:
    """A Japanese or Chinese word inside a sentence written without spaces, and a Korean
    word inside a compound, is found (by subject, sender and body); bodies cached later
    and deleted messages keep the index right."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(
        f.id,
        [
            _msg(1, subject="明日の会議について", from_name="田中太郎"),
            _msg(2, subject="회의일정 안내"),
            _msg(3, subject="会社の忘年会"),
            _msg(4, subject="plain English"),
        ],
    )
    assert [m.uid for m in await cache.search("会議")] == [1]
    assert [m.uid for m in await cache.search("について")] == [1]
    assert [m.uid for m in await cache.search("from:太郎")] == [1]
    assert [m.uid for m in await cache.search("일정")] == [2]
    assert [m.uid for m in await cache.search("会")] == [3, 1]
    assert await cache.search("会議 忘年会") == []
    assert [m.uid for m in await cache.search("engl")] == [4]
    third = (await cache.search("忘年会"))[0]
    await cache.set_body(third.pk, b"raw", "場所は新宿の居酒屋です")
    assert [m.uid for m in await cache.search("body:新宿")] == [3]
    await cache.remove_uids(f.id, [1])
    assert await cache.search("会議") == []
    assert [m.uid for m in await cache.search("会")] == [3]


def test_query_syntax_never_reaches_fts_unquoted() -> None:
    """FTS5 operators and quotes in a user's query are taken as plain text."""
    expr, filters = fts_query('NEAR(a b) AND "x y" from:bob is:unread')
    assert filters == ["m.seen = 0"]
    assert 'sender : "bob"*' in expr
    assert '"x y"' in expr
    assert '"AND"*' in expr
    odd, _ = fts_query('a"b')
    assert odd.count('"') % 2 == 0


async def test_fts_operators_do_not_raise(cache: Cache) -> None:
    """Queries full of FTS5 syntax run without an error."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(f.id, [_msg(1, subject="AND OR NOT")])
    for q in ['"', "AND", "*", "a:b:c", "NEAR(", "(", "from:", "-x", "^x"]:
        await cache.search(q)
    assert [m.uid for m in await cache.search("AND")] == [1]


async def test_address_completion(cache: Cache) -> None:
    """addresses() completes on address or name, most used first."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(
        f.id,
        [
            _msg(1, from_name="Bob Stone", from_addr="bob@example.org"),
            _msg(2, from_name="Bob Stone", from_addr="bob@example.org"),
            _msg(3, from_name="Bobby", from_addr="bobby@example.org"),
        ],
    )
    await cache.note_sent([("Alice", "alice@example.org")])
    assert [a.address for a in await cache.addresses("bo")] == [
        "bob@example.org",
        "bobby@example.org",
    ]
    got = await cache.addresses("ali")
    assert got[0].display() == "Alice <alice@example.org>"


async def test_move_delete_and_uidvalidity_reset(cache: Cache) -> None:
    """move() re-homes a row, delete() drops it, reset_folder() empties the folder."""
    inbox = await cache.upsert_folder("acc", "INBOX")
    archive = await cache.upsert_folder("acc", "Archive", special_use="archive")
    await cache.add_messages(inbox.id, [_msg(1), _msg(2), _msg(3)])
    first = await cache.by_uid(inbox.id, 1)
    assert first is not None
    await cache.move(first.pk, archive.id, new_uid=77)
    moved = await cache.get(first.pk)
    assert moved is not None
    assert (moved.folder, moved.uid) == ("Archive", 77)
    assert (await cache.count(inbox.id), await cache.count(archive.id)) == (2, 1)
    second = await cache.by_uid(inbox.id, 2)
    assert second is not None
    await cache.delete(second.pk)
    assert await cache.count(inbox.id) == 1
    await cache.reset_folder(inbox.id, 999)
    f = await cache.folder(inbox.id)
    assert f is not None
    assert (f.total, f.uidvalidity) == (0, 999)
    found = await cache.by_message_id("m1@example.org")
    assert found is not None
    assert found.message_id == "<m1@example.org>"
    assert len(await cache.all_by_message_id("<m1@example.org>")) == 1


async def test_ingest_sink_stages_batches_in_order_with_counts(cache: Cache) -> None:
    """Batches given to ingest() all land (known UIDs only refresh flags), counts stay
    right, and rows keep the order they were given in."""
    f = await cache.upsert_folder("acc", "INBOX")
    await cache.add_messages(f.id, [_msg(1), _msg(2)])
    async with cache.ingest(f.id, uidvalidity=7) as sink:
        for start in range(1, 50, 7):  # 7 batches, UIDs 1 and 2 again in the first
            batch = [_msg(u, flags=("\\Seen",) if u % 2 else ()) for u in range(start, start + 7)]
            assert await sink.add(batch) == 7
    assert (await cache.count(f.id), await cache.unread(f.id)) == (49, 24)
    rows = await cache.page(f.id, 0, 100, "date-asc")
    assert [m.uid for m in rows] == list(range(1, 50))
    assert rows[0].flags == frozenset({"\\Seen"})  # refreshed
    assert rows[-1].uidvalidity == 7
    assert [m.uid for m in await cache.search("subject")][:3] == [49, 48, 47]  # newest first


async def test_concurrent_ingest_sinks_keep_their_folders_apart(cache: Cache) -> None:
    """Syncs of several folders at once (more than the stage has tables for) each store
    exactly their own batches."""
    folders = [await cache.upsert_folder("acc", f"F{i}") for i in range(6)]
    sinks = [cache.ingest(f.id) for f in folders]
    for start in range(1, 40, 5):  # interleaved: every sink has moves in flight
        for i, sink in enumerate(sinks):
            batch = [_msg(u, subject=f"f{i} {u}") for u in range(start, start + 5)]
            await sink.add(batch)
    for sink in sinks:
        await sink.wait()
    for i, f in enumerate(folders):
        rows = await cache.page(f.id, 0, 100, "date-asc")
        assert [m.subject for m in rows] == [f"f{i} {u}" for u in range(1, 41)]
        assert await cache.count(f.id) == 40


async def test_cache_indexed_before_0006_is_reindexed_for_cjk(tmp_path: Path) -> None:
    """A cache whose search index was built before CJK splitting (migration 0006) is
    re-indexed on open: old mail is found by a word inside unspaced text, and deleting
    it leaves the index consistent (FTS5 integrity check)."""
    import shutil

    from chmail import migrate

    old = tmp_path / "migrations" / "client"
    old.mkdir(parents=True)
    project = Path(migrate.__file__).parent.parent / "migrations" / "client"
    for sql in sorted(project.glob("*.sql")):
        if int(sql.name[:4]) <= 5:
            shutil.copy(sql, old / sql.name)
    path = tmp_path / "cache.sqlite3"
    conn = await migrate.connect(path, "client", root=tmp_path / "migrations")
    await conn.execute("INSERT INTO folders (account, name) VALUES ('acc', 'INBOX')")
    await conn.execute(
        "INSERT INTO messages (folder_id, uid, subject, indexed) VALUES (1, 7, ?, 0)",
        ("明日の会議について",),
    )
    await conn.execute(  # the indexing pass as it was before 0006
        "INSERT INTO messages_fts (rowid, subject, sender, recipients, body)"
        " SELECT id, subject, '', '', '' FROM messages WHERE indexed = 0"
    )
    await conn.execute("UPDATE messages SET indexed = 1")
    await conn.commit()
    await conn.close()
    cache = await Cache.open(path)
    try:
        assert [m.uid for m in await cache.search("会議")] == [7]
        check = "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')"
        await cache.conn.execute(check)  # the index says what its content view says
        await cache.remove_uids(1, [7])
        assert await cache.search("会議") == []
        await cache.conn.execute(check)
    finally:
        await cache.close()


async def test_indexing_pass_moves_the_log_into_the_database(tmp_path: Path) -> None:
    """After a store and its indexing pass the write-ahead log is copied into the
    database file (a reader that opens the file alone sees every message)."""
    path = tmp_path / "cache.sqlite3"
    cache = await Cache.open(path)
    try:
        f = await cache.upsert_folder("acc", "INBOX")
        await cache.add_messages(f.id, [_msg(i) for i in range(1, 2001)])
        await cache.index_pending()
        # the database file itself, without its log, holds them
        snapshot = tmp_path / "copy.sqlite3"
        snapshot.write_bytes(path.read_bytes())
        db = sqlite3.connect(snapshot)
        try:
            assert db.execute("SELECT count(*) FROM messages").fetchone() == (2000,)
        finally:
            db.close()
    finally:
        await cache.close()
