"""The streamed header FETCH (imap_protocol.StreamFetchCommand + imap_parse.HeaderBatches):
fed byte by byte and in random splits, and against a real Dovecot."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from chmail.client.backends.imap import SYNC_ITEMS, ImapBackend
from chmail.client.backends.imap_parse import HeaderBatches, parse_headers_response
from chmail.client.backends.imap_protocol import FastProtocol, StreamFetchCommand
from chmail.client.backends.parse_child import parse_span
from chmail.client.cache_models import Batch, NewMessage, StagedBatch
from chmail.devmail.seed import seed_imap
from tests.fixtures.mailstack import MailStack, MailUser
from tests.fixtures.parse_helpers import shared_ready

ITEMS = b"BODY[HEADER.FIELDS (FROM SUBJECT MESSAGE-ID)]"


class Wire:
    """The transport end the protocol writes to and pauses (no server: bytes are fed)."""

    def __init__(self) -> None:
        self.sent = b""
        self.reading = True

    def write(self, data: bytes) -> None:
        self.sent += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _response(n: int) -> tuple[bytes, list[int]]:
    """A FETCH reply of ``n`` messages: mostly the usual shape, some in other shapes
    (another item order, MODSEQ after the literal), and unsolicited lines between."""
    out: list[bytes] = []
    uids = []
    for i in range(1, n + 1):
        uid = 100 + i
        uids.append(uid)
        block = f"From: u{i} <u{i}@x>\r\nSubject: s{i}\r\nMessage-ID: <m{i}@x>\r\n\r\n".encode()
        lit = b"{%d}\r\n" % len(block) + block
        flags = b"(\\Seen)" if i % 2 else b"()"
        if i % 17 == 0:  # items in another order: the generic path
            out.append(b"* %d FETCH (FLAGS %s UID %d RFC822.SIZE 50 %s " % (i, flags, uid, ITEMS))
            out.append(lit + b")\r\n")
        elif i % 23 == 0:  # something after the literal: the generic path
            head = b"* %d FETCH (UID %d FLAGS %s RFC822.SIZE 50 %s " % (i, uid, flags, ITEMS)
            out.append(head + lit + b" MODSEQ (7))\r\n")
        else:
            head = b"* %d FETCH (UID %d FLAGS %s RFC822.SIZE 50 %s " % (i, uid, flags, ITEMS)
            out.append(head + lit + b")\r\n")
        if i % 31 == 0:
            out.append(b"* %d EXISTS\r\n" % (n + 5))
    return b"".join(out), uids


async def _feed(chunks: list[bytes], n: int, batch: int) -> tuple[list[list[NewMessage]], Any]:
    """Run one streamed FETCH over ``chunks``, draining whenever a batch is ready."""
    loop = asyncio.get_running_loop()
    proto = FastProtocol(loop, None)
    wire = Wire()
    proto.connection_made(wire)
    proto.state = "SELECTED"
    batches = HeaderBatches(set(range(101, 101 + n)), batch)
    cmd = StreamFetchCommand(
        proto.new_tag(), "1:*", SYNC_ITEMS, take=batches.take, prefix="UID", loop=loop, timeout=None
    )
    task = asyncio.ensure_future(proto.execute(cmd))
    await asyncio.sleep(0)  # let execute() send the command
    tag = wire.sent.split(b" ", 1)[0]
    got: list[list[NewMessage]] = []
    for chunk in [*chunks, tag + b" OK Fetch completed.\r\n"]:
        proto.data_received(chunk)
        while not wire.reading:  # paused: the caller stores the batch, then resumes
            assert batches.ready.is_set()
            got.append(batches.drain())
            proto.resume_reading()
    res = await asyncio.wait_for(task, 5)
    rest = batches.drain() + parse_headers_response(res.lines, batches.wanted)
    return [*got, rest], res


def _splits(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        step = rng.choice([1, 2, 3, 7, 64, 500, 4096])
        out.append(data[i : i + step])
        i += step
    return out


async def test_stream_in_random_splits_gives_every_message_once() -> None:
    """Every message arrives once, decoded, whatever the chunking; batches stay bounded."""
    data, uids = _response(300)
    for seed in range(6):
        rng = random.Random(seed)
        chunks = [data] if seed == 0 else _splits(data, rng)
        got, res = await _feed(chunks, 300, batch=rng.choice([1, 10, 64, 1000]))
        assert res.result == "OK"
        msgs = [m for b in got for m in b]
        assert sorted(m.uid for m in msgs) == uids
        by_uid = {m.uid: m for m in msgs}
        for i in (1, 17, 23, 300):
            m = by_uid[100 + i]
            assert (m.subject, m.from_addr, m.message_id) == (f"s{i}", f"u{i}@x", f"<m{i}@x>")
            assert m.flags == (("\\Seen",) if i % 2 else ())
        assert max(len(b) for b in got[:-1] or [[]]) <= 1000


async def test_stream_byte_by_byte() -> None:
    """Fed one byte at a time, the stream gives the same messages as in one piece."""
    data, uids = _response(40)
    got, _ = await _feed([data[i : i + 1] for i in range(len(data))], 40, batch=8)
    whole, _ = await _feed([data], 40, batch=8)
    assert sorted((m.uid, m.subject) for b in got for m in b) == sorted(
        (m.uid, m.subject) for b in whole for m in b
    )
    assert len({m.uid for b in got for m in b}) == len(uids)


def _backend(stack: MailStack, user: MailUser, **kw: Any) -> ImapBackend:
    return ImapBackend(
        user.name, host="127.0.0.1", port=stack.imap_port, user=user.name,
        password=user.password, security="plain", timeout=10, **kw,
    )  # fmt: skip


def _messages(batch: Batch) -> Sequence[NewMessage]:
    return batch.messages() if isinstance(batch, StagedBatch) else batch


async def test_dovecot_stream_in_batches_and_stopping_half_way(
    mailstack: MailStack, mail_user: MailUser
) -> None:
    """headers() hands Dovecot's reply over in bounded batches, parsed here or in the
    helper process; a caller that stops early leaves the connection dropped if the reply
    was half-read (never half-read and in use), and a reconnect works."""
    msgs = [f"Subject: n{i}\r\nMessage-ID: <n{i}@x>\r\n\r\nx\r\n".encode() for i in range(3000)]
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password, msgs)
    await shared_ready()  # (else its first chunks are parsed here while it starts)
    for helper in (False, True):
        b = _backend(mailstack, mail_user, batch=700, parse_worker=helper, worker_min=1000)
        await b.connect()
        uids = await b.uids("INBOX")
        batches = [batch async for batch in b.headers("INBOX", uids)]
        # (the helper's batches are staged: their messages() parses them again here)
        msgs = [_messages(batch) for batch in batches]
        assert sorted(m.subject for batch in msgs for m in batch) == sorted(
            f"n{i}" for i in range(3000)
        )
        assert max(len(batch) for batch in msgs) <= 700
        assert len(batches) >= 5
        assert any(isinstance(batch, StagedBatch) for batch in batches) == helper
        async with contextlib.aclosing(b.headers("INBOX", uids)) as it:
            async for batch in it:
                assert batch
                break
        if not helper:  # reading paused at the first batch: the rest was unread
            assert not b.connected
        if not b.connected:
            await b.connect()
        assert len(await b.flags("INBOX")) == 3000
        await b.close()


async def test_connect_cancelled_before_the_greeting_closes_its_socket() -> None:
    """A connect cancelled while the server has not greeted yet (a hung server, the user
    quitting) closes its socket at once instead of leaving it to the garbage collector."""
    peers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append((reader, writer))
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        b = ImapBackend(
            "u", host="127.0.0.1", port=port, user="u", password="p", security="plain", timeout=30
        )
        task = asyncio.ensure_future(b.connect())
        await asyncio.wait_for(accepted.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not b.connected
        assert await asyncio.wait_for(peers[0][0].read(), 10) == b""  # the server sees EOF
    finally:
        for _, writer in peers:
            writer.close()
        server.close()
        await server.wait_closed()


async def _feed_spans(chunks: list[bytes], n: int, limit: int) -> tuple[list[NewMessage], Any]:
    """One streamed FETCH over ``chunks`` in span mode (what the parse helper is sent):
    runs of usual-shape items, cut on the loop; the other shapes as lines."""
    loop = asyncio.get_running_loop()
    proto = FastProtocol(loop, None)
    wire = Wire()
    proto.connection_made(wire)
    proto.state = "SELECTED"
    spans: list[tuple[bytes, int]] = []

    def take_span(span: bytes, count: int) -> bool:
        assert 0 < count <= limit
        spans.append((span, count))
        return False

    cmd = StreamFetchCommand(
        proto.new_tag(), "1:*", SYNC_ITEMS, take_span=take_span, span_limit=limit,
        prefix="UID", loop=loop, timeout=None,
    )  # fmt: skip
    task = asyncio.ensure_future(proto.execute(cmd))
    await asyncio.sleep(0)  # let execute() send the command
    tag = wire.sent.split(b" ", 1)[0]
    for chunk in [*chunks, tag + b" OK Fetch completed.\r\n"]:
        proto.data_received(chunk)
    res = await asyncio.wait_for(task, 5)
    msgs = []
    for span, count in spans:
        got = parse_span(span)
        assert len(got) == count
        msgs += got
    return msgs + parse_headers_response(res.lines, set(range(101, 101 + n))), res


async def test_span_mode_in_random_splits_gives_every_message_once() -> None:
    """In span mode (for the parse helper) every message arrives once, parsed as in the
    per-message mode, whatever the chunking and the span limit."""
    data, uids = _response(300)
    whole, _ = await _feed([data], 300, batch=1000)
    expected = sorted((m.uid, m.subject, m.from_addr, m.flags) for b in whole for m in b)
    for seed in range(6):
        rng = random.Random(seed)
        chunks = [data] if seed == 0 else _splits(data, rng)
        msgs, res = await _feed_spans(chunks, 300, limit=rng.choice([1, 7, 64, 1000]))
        assert res.result == "OK"
        assert sorted((m.uid, m.subject, m.from_addr, m.flags) for m in msgs) == expected
        assert sorted(m.uid for m in msgs) == uids


async def test_span_mode_refuses_an_oversized_literal() -> None:
    """A literal over the cap in span mode closes the connection with the limit named,
    before anything of it is buffered for the helper."""
    loop = asyncio.get_running_loop()
    proto = FastProtocol(loop, None, max_literal=1000)
    wire = Wire()
    closed = []
    wire.close = lambda: closed.append(True)  # type: ignore[method-assign]
    proto.connection_made(wire)
    proto.state = "SELECTED"
    spans: list[bytes] = []
    cmd = StreamFetchCommand(
        proto.new_tag(), "1:*", SYNC_ITEMS, take_span=lambda s, n: spans.append(s) or False,
        prefix="UID", loop=loop, timeout=None,
    )  # fmt: skip
    task = asyncio.ensure_future(proto.execute(cmd))
    await asyncio.sleep(0)
    proto.data_received(
        b"* 1 FETCH (UID 5 FLAGS () RFC822.SIZE 9 BODY[HEADER.FIELDS (FROM)] {999999}\r\nFrom:"
    )
    task.cancel()  # (the wire here cannot report the close back)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert closed
    assert proto.error is not None
    assert "limit" in str(proto.error)
    assert not spans
