"""The chat session's own receive path (outside input) under random splits and garbage."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chmail import protocol as p
from chmail.chserver.sessionconn import SessionConn
from chmail.chserver.sessions import ChatSession, MemoryBackend, join_token


class Wire(asyncio.Transport):
    """The bytes a SessionConn writes, and whether it closed (an in-memory transport)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def frames(self) -> list[dict[str, Any]]:
        out, buf = [], bytes(self.out)
        while len(buf) >= 4:
            (n,) = p.LENGTH.unpack_from(buf)
            out.append(msgpack.unpackb(buf[4 : 4 + n], raw=False))
            buf = buf[4 + n :]
        return out


def run(chunks: list[bytes]) -> tuple[list[dict[str, Any]], bool, list[str]]:
    """Feed ``chunks`` to a fresh session connection: (frames out, closed, texts stored)."""

    async def go() -> tuple[list[dict[str, Any]], bool, list[str]]:
        session = ChatSession(
            id=1,
            port=0,
            owner="alice",
            message_id="<m@x>",
            subject="s",
            secret=b"k" * 32,
            backend=MemoryBackend(),
            max_text=100,
        )
        wire = Wire()
        conn = SessionConn(session)
        conn.connection_made(wire)
        for chunk in chunks:
            if wire.closed:
                break
            conn.data_received(chunk)
        session.commit()
        session.flush_out()
        texts = [m[3] for m in session.messages]
        closed = wire.closed
        session.end("test")
        return wire.frames(), closed, texts

    return asyncio.run(go())


def opening(n: int) -> bytes:
    """hello, bob's join, then ``n`` says."""
    frames = [
        p.encode(p.Hello()),
        p.encode(p.Join(id=1, session=1, login="bob", token=join_token(b"k" * 32, "bob"))),
    ]
    frames += [p.encode(p.Say(id=i + 2, cid=f"c{i}", text=f"m{i}")) for i in range(n)]
    return b"".join(frames)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for pt in points:
        out.append(data[last:pt])
        last = pt
    out.append(data[last:])
    return [c for c in out if c]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(n=st.integers(0, 20), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_of_valid_frames_gives_the_same_chat(n: int, cuts: list[int]) -> None:
    """However the byte stream is cut, the same messages are stored and acknowledged."""
    data = opening(n)
    whole = run([data])
    pieces = run(split(data, cuts))
    assert pieces[2] == whole[2] == [f"m{i}" for i in range(n)]
    assert [f["t"] for f in pieces[0]] == [f["t"] for f in whole[0]]
    assert not pieces[1]


@FUZZ
@given(garbage=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_garbage_after_join_never_escapes_the_connection(garbage: bytes, cuts: list[int]) -> None:
    """Random bytes after a valid join get error frames or a close, never an exception."""
    frames, closed, texts = run(split(opening(1) + garbage, cuts))
    assert texts[:1] == ["m0"]
    assert frames[0]["t"] == "hello"
    assert closed or all(
        f["t"]
        in (
            "hello",
            "joined",
            "said_many",
            "said",
            "error",
            "pong",
            "ok",
            "ended",
            "read",
            "typing",
            "member",
        )
        for f in frames
    )


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["t", "id", "cid", "text", "x"]),
        st.one_of(
            st.integers(-5, 2**60),
            st.text(max_size=5),
            st.booleans(),
            st.none(),
            st.binary(max_size=3),
        ),
    )
)
def test_malformed_say_maps_are_refused_one_by_one(fields: dict[str, Any]) -> None:
    """A ``say`` map with wrong fields is answered with an error, and the link carries on."""
    bad = dict(fields, t="say")
    body = msgpack.packb(bad, use_bin_type=True)
    tail = p.encode(p.Say(id=99, cid="last", text="still here"))
    _, closed, texts = run([opening(0) + p.LENGTH.pack(len(body)) + body + tail])
    assert not closed
    assert texts[-1] == "still here"


def test_frames_trickling_in_byte_by_byte_give_the_same_chat() -> None:
    """A stream fed one byte per read gives the same messages and replies as one read."""
    data = opening(5) + p.encode(p.Say(id=50, cid="long", text="x" * 90))
    whole = run([data])
    trickle = run([data[i : i + 1] for i in range(len(data))])
    assert trickle[2] == whole[2] == [*(f"m{i}" for i in range(5)), "x" * 90]
    assert [f["t"] for f in trickle[0]] == [f["t"] for f in whole[0]]
