"""Header parsing in the helper process (parse_worker.py): a big sync through it stores the
same rows as parsing in-process, and a helper that dies, sends garbage or hangs loses
nothing (its chunks are parsed in the parent)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from chmail.client import cache_stage
from chmail.client.backends.imap import ImapBackend
from chmail.client.backends.parse_child import parse_span
from chmail.client.backends.parse_worker import ParsePool, ParseWorker
from chmail.client.backends.span_rows import _by_shape, span_rows
from chmail.client.cache import Cache
from chmail.client.cache_models import Batch, StagedBatch
from chmail.client.mime_headers import SYNC_FIELDS
from chmail.client.sync import Syncer
from chmail.devmail.seed import demo_messages, seed_imap
from tests.fixtures.mailstack import MailStack, MailUser
from tests.fixtures.parse_helpers import ready, shared_ready

_DEMO = demo_messages(150, start=1_790_000_000)  # (Message-IDs differ per call)


_WANTED = {f.lower().encode() for f in SYNC_FIELDS}


def _fetched(raw: bytes) -> bytes:
    """The header block of ``raw`` as a header sync gets it: only the fields it asks for
    (``BODY[HEADER.FIELDS (...)]``), each with its folded lines, then the blank line."""
    keep, out = False, []
    for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            keep = line.split(b":")[0].lower() in _WANTED
        if keep:
            out.append(line + b"\r\n")
    return b"".join(out) + b"\r\n"


def _span(first: int = 0, last: int | None = None) -> tuple[bytes, int]:
    """FETCH items of the usual shape (as Dovecot sends them) holding header blocks of
    many shapes: demo mail (Korean, Japanese, encoded words, replies), stamped mail with
    Cc, a folded header, bare LF (a whole block, and one inside a value), bytes that are
    no charset, an empty block. Returns (bytes, how many)."""
    blocks = [_fetched(raw) for raw in _DEMO]
    blocks += [
        b"From: Shop <ads@mall.example>\r\nTo: a@x, B <b@x>\r\nCc: =?utf-8?b?7JWI64WV?= <c@x>"
        b"\r\nSubject: Sale\r\nX-CH-Login: shop\r\nX-CH-Port: 40001\r\n"
        b"X-CH-Host: ch.example:7000\r\nX-CH-Sig: v1.abc \r\n\r\n",
        b"X-CH-Login: bob\r\nFrom: b@x\r\nX-CH-Port: 40002\r\nCc: d@x\r\n\r\n",
        b"Subject: folded\r\n over two lines\r\nFrom: A <a@x>\r\n\r\n",
        b"From: e@x\r\nSubject: plain\r\n\r\n",
        b"From: e@x\r\nSubject: a bare\nLF inside\r\n\r\n",  # (same shape, but for that)
        b"Subject: bare LF\nFrom: b@x\n\n",
        b"Subject: \xff\xfe\x80 not a charset\r\nFrom: \xc3(\r\n\r\n",
        b"",
    ]
    blocks = blocks[first:last]
    items = [
        b"* %d FETCH (UID %d FLAGS (%s) RFC822.SIZE %d BODY[HEADER.FIELDS (FROM SUBJECT)]"
        b" {%d}\r\n%s)\r\n" % (i, 7 + i, b"\\Seen" if i % 3 else b"", 100 + i, len(b), b)
        for i, b in enumerate(blocks, start=first + 1)
    ]
    return b"".join(items), len(items)


# A stand-in helper's first words, as the real one says them (parse_child.READY).
READY_PY = "import sys; sys.stdout.buffer.write(bytes(4)); sys.stdout.flush()"


def _fields(msgs: list[object]) -> list[dict[str, object]]:
    return [dataclasses.asdict(m) for m in msgs]  # type: ignore[call-overload]


def _rows(batch: Batch) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    """The cache rows and address pairs a batch holds (a staged batch's image is read
    back as the cache reads it)."""
    if not isinstance(batch, StagedBatch):
        return cache_stage.rows(batch), cache_stage.address_pairs(batch)
    db = sqlite3.connect(":memory:")
    try:
        db.deserialize(batch.image)
        rows = db.execute("SELECT * FROM s ORDER BY rowid").fetchall()
        (packed,) = db.execute("SELECT packed FROM pairs").fetchone()
    finally:
        db.close()
    return rows, cache_stage.unpack_pairs(packed)


def _expected(span: bytes) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    msgs = parse_span(span)
    return cache_stage.rows(msgs), cache_stage.address_pairs(msgs)


async def test_helper_parses_like_the_parent() -> None:
    """The helper process answers each chunk, in order, with a staged batch holding
    exactly the rows and address pairs that parsing in the parent gives, for well-formed
    and malformed header blocks alike."""
    chunks = [_span(i, i + 40) for i in range(0, 160, 40)]
    worker = ParseWorker()
    await ready(worker)
    try:
        futs = [worker.submit(span, n) for span, n in chunks]
        got = [await asyncio.wait_for(fut, 30) for fut in futs]
        assert worker.answered == len(futs)
        assert not worker.broken
    finally:
        worker.close()
    assert all(isinstance(b, StagedBatch) for b in got)
    assert [b.count for b in got] == [n for _, n in chunks]
    for batch, (span, _) in zip(got, chunks, strict=True):
        assert _rows(batch) == _expected(span)
        assert batch.messages() == parse_span(span)  # its fallback
    span, n = _span()
    rows, pairs = _expected(span)
    assert len(rows) == n == 158
    assert rows[0][8]  # a subject
    assert rows[-1][0] == 7 + 158
    assert rows[150][12] == (
        "X-CH-Login: shop\nX-CH-Port: 40001\nX-CH-Host: ch.example:7000\nX-CH-Sig: v1.abc\n"
    )
    assert ("", "b@x") in pairs


def test_rows_by_learned_shape_are_the_rows_of_the_messages() -> None:
    """Cutting and reading a span by learned shapes gives the same rows and address
    pairs as parsing each message, whatever the order the shapes come in."""
    span, _ = _span()
    items = []
    pos = 0
    while pos < len(span):
        end = span.index(b")\r\n* ", pos) + 3 if b")\r\n* " in span[pos:] else len(span)
        items.append(span[pos:end])
        pos = end
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(items)
        mixed = b"".join(items * 2)  # each shape seen again after it was learned
        assert span_rows(mixed) == _expected(mixed)
    # and most items were read by a shape: stamped, Cc, replies, encoded words
    by_shape = [item for item in items if _by_shape(item, 0, [], []) == len(item)]
    assert len(by_shape) > 140
    assert any(b"X-CH-Port: 40002" in item for item in by_shape)


async def test_helper_that_dies_mid_chunk_loses_nothing() -> None:
    """A helper that exits with chunks owed: they are parsed in the parent, and later
    chunks too (the helper is not used again)."""
    quits = [sys.executable, "-c", f"{READY_PY}; sys.stdin.buffer.read(4)"]
    worker = ParseWorker(quits)
    await ready(worker)
    try:
        first = worker.submit(*_span(0, 80))
        second = worker.submit(*_span(80))
        got = await asyncio.wait_for(first, 30) + await asyncio.wait_for(second, 30)
        assert worker.broken
        assert worker.answered == 0
        later = await asyncio.wait_for(worker.submit(*_span(0, 5)), 30)
    finally:
        worker.close()
    assert _fields(got) == _fields(parse_span(_span()[0]))  # type: ignore[arg-type]
    assert [m.uid for m in later] == [8, 9, 10, 11, 12]


async def test_helper_sending_garbage_or_hanging_loses_nothing() -> None:
    """A helper that answers garbage, or nothing at all, is dropped and its chunks are
    parsed in the parent."""
    span, n = _span(0, 30)
    garbage = [sys.executable, "-c",
               f"{READY_PY}; sys.stdout.buffer.write(b'\\x00\\x00\\x00\\x03\\xc1\\xc1\\xc1');"
               " sys.stdout.flush(); sys.stdin.buffer.read()"]  # fmt: skip
    hangs = [sys.executable, "-c", f"{READY_PY}; sys.stdin.buffer.read()"]
    for argv in (garbage, hangs):
        worker = ParseWorker(argv, answer_timeout=0.5)
        await ready(worker)
        try:
            got = await asyncio.wait_for(worker.submit(span, n), 30)
            assert worker.broken
        finally:
            worker.close()
        assert len(got) == n
        assert _fields(got) == _fields(parse_span(span))  # type: ignore[arg-type]


async def test_big_sync_through_the_helper_stores_what_in_process_parsing_stores(
    mailstack: MailStack, mail_user: MailUser, tmp_path: Path
) -> None:
    """A sync big enough for the helper stores every message with the same headers as a
    sync that parses in-process (real Dovecot, two caches)."""
    n = 1200
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(n, to=("U", mail_user.address)))  # fmt: skip
    shared = await shared_ready()  # (chunks sent before it is ready are parsed here)
    answered = shared.answered
    rows, book = [], []
    for use in (True, False):
        cache = await Cache.open(tmp_path / f"cache-{use}.sqlite3")
        b = ImapBackend(
            mail_user.name, host="127.0.0.1", port=mailstack.imap_port, user=mail_user.name,
            password=mail_user.password, security="plain", timeout=10,
            parse_worker=use, worker_min=1000, batch=300,
        )  # fmt: skip
        try:
            await b.connect()
            res = await Syncer(cache, b, mail_user.name).sync_folder("INBOX")
            assert res.new == n
            inbox = await cache.folder_by_name(mail_user.name, "INBOX")
            assert inbox is not None
            assert inbox.total == n
            page = await cache.page(inbox.id, 0, n)
            rows.append(sorted(dataclasses.astuple(dataclasses.replace(m, pk=0)) for m in page))
            await cache.index_pending()
            book.append(await cache.addresses("", 1000))
        finally:
            await b.close()
            await cache.close()
    assert shared.answered > answered  # the helper did parse the first sync
    assert len(rows[0]) == n
    assert rows[0] == rows[1]
    assert len(book[0]) > 1  # the address book holds the senders, from either sync
    assert book[0] == book[1]


async def test_chunks_before_the_helper_is_ready_are_parsed_here() -> None:
    """While the helper has not said READY (still starting), chunks are parsed in the
    parent at once: a sync never waits on a helper's start."""
    slow = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]  # never READY
    span, n = _span(0, 20)
    worker = ParseWorker(slow)
    try:
        fut = worker.submit(span, n)
        assert fut.done()
        assert _fields(fut.result()) == _fields(parse_span(span))  # type: ignore[arg-type]
        assert worker.answered == 0
        assert not worker.broken
    finally:
        worker.close()


async def test_unreadable_staged_batch_is_parsed_again_and_stored(tmp_path: Path) -> None:
    """A staged batch whose image is not the database it claims (or holds the wrong
    number of rows) is stored from its messages instead: the folder gets every message
    and its counts, and the address book its senders."""
    span, n = _span(0, 60)
    good = cache_stage.image_of(*_expected(span))
    short = cache_stage.image_of(*_expected(_span(0, 5)[0]))
    bad_images = [cache_stage.IMAGE_MAGIC + b"\0" * 5000, short]
    for i, image in enumerate([*bad_images, good]):
        cache = await Cache.open(tmp_path / f"c{i}.sqlite3")
        try:
            folder = await cache.upsert_folder("a", "INBOX")
            async with cache.ingest(folder.id, uidvalidity=1) as sink:
                assert await sink.add(StagedBatch(image, n, lambda: parse_span(span))) == n
            stored = await cache.folder(folder.id)
            assert stored is not None
            assert stored.total == n
            assert stored.unread == sum(1 for m in parse_span(span) if "\\Seen" not in m.flags)
            page = await cache.page(folder.id, 0, 100)
            assert sorted(m.uid for m in page) == sorted(m.uid for m in parse_span(span))
            await cache.index_pending()
            assert await cache.addresses("", 5)  # the senders are in the address book
        finally:
            await cache.close()


async def test_pool_gives_no_chunk_to_a_helper_still_starting() -> None:
    """While one helper is still starting and the other is ready, every chunk goes to
    the ready one (none is parsed in the parent, which is slower)."""
    pool = ParsePool(2)
    starting = ParseWorker([sys.executable, "-c", "import sys; sys.stdin.buffer.read()"])
    pool.workers = [starting, ParseWorker()]
    try:
        assert pool.start()
        await ready(pool.workers[1])
        chunks = [_span(i, i + 20) for i in range(0, 80, 20)]
        got = [await asyncio.wait_for(pool.submit(span, n), 30) for span, n in chunks]
        assert all(isinstance(b, StagedBatch) for b in got)
        assert pool.workers[1].answered == len(chunks)
        assert starting.load() == (True, 0)
    finally:
        pool.close()


async def test_pool_sends_chunks_to_the_helper_owing_fewest() -> None:
    """A helper that stops answering gets no more chunks while the other keeps up, and
    the chunk it held is parsed in the parent when it is found dead: nothing is lost."""
    stuck_argv = [sys.executable, "-c", READY_PY + "; sys.stdin.buffer.read()"]
    pool = ParsePool(2)
    stuck = ParseWorker(stuck_argv)
    pool.workers = [stuck, ParseWorker()]
    try:
        for w in pool.workers:
            await ready(w)
        chunks = [_span(i, i + 20) for i in range(0, 100, 20)]
        first = pool.submit(*chunks[0])  # both idle: the first in turn takes it
        assert stuck.load() == (False, 1)
        for span, n in chunks[1:]:  # one at a time, each answered before the next
            await asyncio.wait_for(pool.submit(span, n), 30)
        assert stuck.load() == (False, 1)  # the first chunk only (then it was busy)
        assert pool.workers[1].answered == len(chunks) - 1
        assert stuck.pid is not None
        os.kill(stuck.pid, signal.SIGKILL)
        held = await asyncio.wait_for(first, 30)  # the stuck helper's
        assert _fields(held) == _fields(parse_span(chunks[0][0]))  # type: ignore[arg-type]
        assert stuck.broken
    finally:
        pool.close()
