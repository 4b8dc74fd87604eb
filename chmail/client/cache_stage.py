"""Header batches staged in memory, then moved into the cache by one statement.

Why: sqlite3 drops the GIL only while SQLite works, once per row of an ``executemany``;
on the SQLite thread next to a busy event loop every retake of the GIL waits out the
interpreter's switch interval, so storing a batch while the next one is parsed was
slower than taking turns. Here the event loop's thread binds the batch's rows into a
small in-memory table (no index: binding is most of the cost, and it needs the GIL
anyway), and the SQLite thread moves the whole table into ``messages`` with one
``INSERT ... SELECT`` (indexes, B-tree, commit) without the GIL, while the loop parses
the next batch.

Each table lives in its own memory database in SQLite's shared cache
(``file:...?mode=memory&cache=shared``), attached to the cache connection as ``stage0``,
``stage1``, ...: a statement holds the shared-cache mutex of every database it uses for
its whole step, so with one database for all tables, the loop filling one table waited
out the SQLite thread's move from the other (a put took 2.7 times as long). Each sync
in progress (one per folder, several accounts may sync at once) leases two tables, which
take turns: the loop fills one while the SQLite thread reads the other; only the loop
writes the stage.

The parse helpers (backends/parse_worker.py) stage a batch themselves: ``image_of`` puts
its rows in a database of their own and serializes it; the cache connection reads that
back as the attached schema ``IMAGE`` and moves it in by the same statement, so the loop
does no per-message work for it at all.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from chmail.client.cache_models import NewMessage, flags_text

COLS = (
    "uid, message_id, in_reply_to, refs, from_name, from_addr, to_addrs, cc_addrs, subject,"
    " date, flags, size, ch_headers"
)
SLOTS = 2  # tables per sync in progress
TABLES = 8  # so four syncs can stage at once (a fifth stores its batches directly);
# each is an attached database, and SQLite attaches at most 10 to a connection
_FLAGS: dict[tuple[str, ...], str] = {}  # few flag sets per mailbox


def _flags_text(flags: Iterable[str]) -> str:
    if type(flags) is not tuple:
        return flags_text(flags)
    text = _FLAGS.get(flags)
    if text is None:
        if len(_FLAGS) > 256:
            _FLAGS.clear()
        text = _FLAGS[flags] = flags_text(flags)
    return text


def rows(msgs: Sequence[NewMessage]) -> list[tuple[Any, ...]]:
    """The values of ``COLS`` for each message."""
    return [
        (
            m.uid, m.message_id, m.in_reply_to, " ".join(m.references),
            m.from_name, m.from_addr, m.to, m.cc, m.subject, m.date,
            _flags_text(m.flags), m.size,
            "".join(f"{n}: {v}\n" for n, v in m.ch_headers) if m.ch_headers else "",
        )
        for m in msgs
    ]  # fmt: skip


def insert_sql(folder_id: int, uidvalidity: int, source: str) -> str:
    """INSERT of ``COLS`` rows (``source``: ``VALUES (?1, ...)`` or a SELECT) into messages
    of one folder; a known UID only refreshes its flags. thread_id and the sort keys wait
    for the indexing pass (cache_ingest)."""
    return (
        "INSERT INTO messages (folder_id, uid, uidvalidity, message_id, in_reply_to,"  # noqa: S608 (ints)
        " refs, thread_id, from_name, from_addr, to_addrs, cc_addrs, subject, date,"
        " flags, seen, size, has_ch, ch_headers, indexed)"
        f" SELECT {int(folder_id)}, uid, {int(uidvalidity)}, message_id, in_reply_to, refs, 0,"
        " from_name, from_addr, to_addrs, cc_addrs, subject, date, flags,"
        " instr(' ' || flags || ' ', ' \\Seen ') > 0, size, ch_headers != '', ch_headers, 0"
        f" FROM ({source}) WHERE true"  # "WHERE": the upsert parse needs it after a SELECT
        " ON CONFLICT (folder_id, uid) DO UPDATE SET flags = excluded.flags,"
        " seen = excluded.seen"
    )


def counts_sql(folder_id: int, source: str) -> str:
    """(new rows, new unread rows) among ``source``'s UIDs for the folder counts: one
    look-up in the (folder_id, uid) index per row (``uid NOT IN (SELECT ...)`` built the
    folder's whole UID list for every batch: as long as the insert, on a first sync)."""
    return (
        "SELECT count(*), coalesce(sum(instr(' ' || flags || ' ', ' \\Seen ') = 0), 0)"  # noqa: S608 (int)
        f" FROM {source} AS s WHERE NOT EXISTS (SELECT 1 FROM messages AS m"
        f" WHERE m.folder_id = {int(folder_id)} AND m.uid = s.uid)"
    )


PUT_ROWS = 64  # rows per INSERT statement of a put (13 values each: 832 < 32,766 binds)


@functools.lru_cache(maxsize=64)
def _insert_rows(table: str, n: int, width: int) -> str:
    one = f"({', '.join('?' * width)})"
    return f"INSERT INTO {table} VALUES {', '.join([one] * n)}"  # noqa: S608 (fixed text)


def insert_rows(db: sqlite3.Connection, table: str, values: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``values`` (tuples of one width) into ``table``, ``PUT_ROWS`` rows a
    statement: one bind loop and one step per statement instead of per row (a quarter
    less time than ``executemany``)."""
    if not values:
        return
    width = len(values[0])
    full = len(values) - len(values) % PUT_ROWS
    chain = itertools.chain.from_iterable
    many = _insert_rows(table, PUT_ROWS, width)
    for i in range(0, full, PUT_ROWS):
        db.execute(many, tuple(chain(values[i : i + PUT_ROWS])))
    if full < len(values):
        rest = values[full:]
        db.execute(_insert_rows(table, len(rest), width), tuple(chain(rest)))


def address_pairs(msgs: Sequence[NewMessage]) -> list[tuple[str, str]]:
    """The (name, address) pairs of newly synced messages, for the address book
    (``cache_search.note_pairs_sync``): kept instead of the messages themselves, so a
    synced batch is freed once it is stored."""
    pairs: list[tuple[str, str]] = []
    for m in msgs:
        if m.addresses:
            pairs.extend(m.addresses)
        elif m.from_addr:
            pairs.append((m.from_name, m.from_addr))
    return pairs


# Images: a batch's rows in a database of their own, serialized (sqlite3 3.11+, SQLite
# built with the serialize API), which the parse helper makes and the cache connection
# reads back as the attached schema IMAGE (Connection.deserialize).
IMAGES = hasattr(sqlite3.Connection, "serialize") and hasattr(sqlite3.Connection, "deserialize")
IMAGE = "chimg"
IMAGE_MAGIC = b"SQLite format 3\0"


_ENCODE_PAIRS = msgspec.msgpack.Encoder().encode
_DECODE_PAIRS = msgspec.msgpack.Decoder(list[tuple[str, str]]).decode


def image_of(values: list[tuple[Any, ...]], pairs: list[tuple[str, str]]) -> bytes:
    """A serialized database: table ``s`` (``COLS``: ``values``) and table ``pairs``, one
    row: ``pairs`` packed (``unpack_pairs``), which only the indexing pass reads."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute(f"CREATE TABLE s ({COLS})")
        db.execute("CREATE TABLE pairs (packed BLOB)")
        db.execute("BEGIN")
        db.executemany(_INSERT_IMAGE, values)  # (here faster than insert_rows)
        db.execute("INSERT INTO pairs VALUES (?)", (_ENCODE_PAIRS(pairs),))
        db.execute("COMMIT")
        return db.serialize()
    finally:
        db.close()


_INSERT_IMAGE = f"INSERT INTO s VALUES ({', '.join('?' * 13)})"  # noqa: S608 (fixed text)


def unpack_pairs(packed: bytes) -> list[tuple[str, str]]:
    """The address pairs of an image (raises ValueError if they are not)."""
    try:
        return _DECODE_PAIRS(packed)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc


class Stage:
    """The in-memory staging tables (owned by the event loop's thread)."""

    def __init__(self, name: str) -> None:
        self.uris = [f"file:{name}-{n}?mode=memory&cache=shared" for n in range(TABLES)]
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        for n, uri in enumerate(self.uris):
            self.db.execute(f"ATTACH DATABASE ? AS st{n}", (uri,))
            self.db.execute(f"CREATE TABLE IF NOT EXISTS st{n}.s ({COLS})")
        self.free = list(range(TABLES))

    @staticmethod
    def table(n: int) -> str:
        """Table ``n`` as the cache connection names it (attached by ``attach_sql``)."""
        return f"stage{int(n)}.s"

    def attach_sql(self) -> list[tuple[str, tuple[str]]]:
        """The ATTACH statements that give the cache connection the tables."""
        return [(f"ATTACH DATABASE ? AS stage{n}", (uri,)) for n, uri in enumerate(self.uris)]

    def lease(self) -> list[int] | None:
        """SLOTS table numbers for one sync, or None when all are in use."""
        if len(self.free) < SLOTS:
            return None
        taken, self.free = self.free[:SLOTS], self.free[SLOTS:]
        return taken

    def give_back(self, tables: list[int]) -> None:
        self.free.extend(tables)

    def put(self, slot: int, values: list[tuple[Any, ...]]) -> None:
        """Replace table ``slot``'s rows with ``values`` (``COLS`` each)."""
        db = self.db
        table = f"st{int(slot)}.s"
        db.execute("BEGIN")
        try:
            db.execute(f"DELETE FROM {table}")  # noqa: S608 (a slot number)
            insert_rows(db, table, values)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
