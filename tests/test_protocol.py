"""The sans-I/O CH protocol: framing, limits, hello/version, typed messages, rejections."""

from __future__ import annotations

import random
import struct

import msgpack
import pytest

from chmail import protocol as p
from chmail.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def server_after_hello() -> p.Connection:
    conn = p.Connection(p.Role.SERVER)
    conn.send(p.Hello())
    conn.receive_data(p.encode(p.Hello()))
    assert isinstance(conn.next_event(), p.Hello)
    return conn


STREAM = [
    p.Hello(agent="t"),
    p.Auth(id=1, login="alice", password="pw", host="h.example"),
    p.Ping(n=3),
    p.Unknown("future_thing", 9, {}),
    p.Pong(n=4),
]


def stream_bytes() -> bytes:
    out = b""
    for msg in STREAM:
        if isinstance(msg, p.Unknown):
            out += frame({"t": "future_thing", "id": 9, "x": [1, 2]})
        else:
            out += p.encode(msg)
    return out


def describe(msgs: list[p.Message]) -> list[tuple[str, object]]:
    return [
        (m.type_name, m.id) if isinstance(m, p.Unknown) else (m.t, getattr(m, "id", None))
        for m in msgs
    ]


def test_one_byte_at_a_time() -> None:
    """Frames fed one byte at a time decode to the same messages as one chunk."""
    data = stream_bytes()
    conn = p.Connection(p.Role.SERVER)
    got: list[p.Message] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        got.extend(conn.events())
    assert describe(got) == describe(STREAM)
    assert got[1] == STREAM[1]


def test_random_splits() -> None:
    """Any split of the byte stream yields the same messages, in order."""
    data = stream_bytes()
    rng = random.Random(1234)
    for _ in range(300):
        conn = p.Connection(p.Role.SERVER)
        got: list[p.Message] = []
        i = 0
        while i < len(data):
            n = rng.randint(1, 12)
            conn.receive_data(data[i : i + n])
            got.extend(conn.events())
            i += n
        assert describe(got) == describe(STREAM)


def test_oversized_length_refused_before_buffering() -> None:
    """A length prefix over the limit raises at once; nothing of the body is buffered."""
    dec = p.FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge, match="1025"):
        list(dec.feed(struct.pack(">I", 1025) + b"x" * 10))
    assert dec.buffered == 0


def test_decoder_never_holds_more_than_one_frame() -> None:
    """While a maximal frame arrives the buffer stays within limit + prefix."""
    dec = p.FrameDecoder(max_frame=4096)
    body = msgpack.packb({"t": "ping", "n": 1, "pad": "x" * 4000})
    data = struct.pack(">I", len(body)) + body
    for i in range(0, len(data), 100):
        assert len(list(dec.feed(data[i : i + 100]))) in (0, 1)
        assert dec.buffered <= 4096 + 4


def test_server_refuses_other_version_naming_both() -> None:
    """A hello with another version is refused with a message naming both versions."""
    conn = p.Connection(p.Role.SERVER)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(p.encode(p.Hello(version=7)))
    assert info.value.code == p.E_VERSION
    assert "7" in info.value.message
    assert str(p.PROTOCOL_VERSION) in info.value.message
    assert conn.state is p.State.CLOSED


def test_first_frame_must_be_hello() -> None:
    """Anything before hello is a broken stream."""
    conn = p.Connection(p.Role.SERVER)
    with pytest.raises(RemoteProtocolError, match="hello"):
        conn.receive_data(p.encode(p.Ping()))


@pytest.mark.parametrize(
    "body",
    [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"x": 1}), msgpack.packb({"t": 5})],
)
def test_garbage_bodies_are_fatal(body: bytes) -> None:
    """A body that is not a msgpack map with a string t closes the connection."""
    conn = server_after_hello()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(struct.pack(">I", len(body)) + body)
    assert conn.state is p.State.CLOSED
    conn.receive_data(b"more")  # ignored once closed
    assert conn.next_event() is None


def test_message_rule_breaks_are_rejected_not_fatal() -> None:
    """Wrong field types, pre-auth requests and wrong direction surface as Rejected."""
    conn = server_after_hello()
    conn.receive_data(
        frame({"t": "auth", "id": 1, "login": 5})
        + p.encode(p.Alloc(id=2, message_id="<a@b>", recipients=["x@y"]))
        + frame({"t": "auth_ok", "id": 3})
        + p.encode(p.Ping(n=1))
    )
    events = list(conn.events())
    assert [type(e).__name__ for e in events] == ["Rejected", "Rejected", "Rejected", "Ping"]
    codes = [e.code for e in events if isinstance(e, p.Rejected)]
    assert codes == [p.E_INVALID, p.E_NOT_AUTHENTICATED, p.E_INVALID]
    assert [e.id for e in events if isinstance(e, p.Rejected)] == [1, 2, 3]


def test_after_auth_ok_requests_pass() -> None:
    """Once the server sent auth_ok, the client's requests are accepted."""
    conn = server_after_hello()
    conn.send(p.AuthOk(id=1, login="alice"))
    conn.receive_data(p.encode(p.Alloc(id=2, message_id="<a@b>", recipients=["x@y"])))
    assert isinstance(conn.next_event(), p.Alloc)


def test_unknown_type_surfaces() -> None:
    """An unknown type is an Unknown event carrying its id."""
    conn = server_after_hello()
    conn.receive_data(frame({"t": "teleport", "id": 42}))
    ev = conn.next_event()
    assert isinstance(ev, p.Unknown)
    assert (ev.type_name, ev.id) == ("teleport", 42)


def test_local_rules() -> None:
    """We may not send before hello, send the peer's types, or send oversized frames."""
    conn = p.Connection(p.Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        conn.send(p.Ping())
    conn.send(p.Hello())
    with pytest.raises(LocalProtocolError):
        conn.send(p.AuthOk())
    small = p.Connection(p.Role.CLIENT, max_frame=64)
    small.send(p.Hello())
    with pytest.raises(LocalProtocolError):
        small.send(p.Presence(id=1, logins=["a" * 80]))


def test_password_not_in_repr() -> None:
    """An Auth message never shows its password in repr (logs, tracebacks)."""
    assert "hunter2" not in repr(p.Auth(id=1, login="a", password="hunter2"))


def test_ids_beyond_2_53_are_not_ids() -> None:
    """Ids outside 0..2**53 are refused so every client language can hold them."""
    conn = server_after_hello()
    conn.receive_data(frame({"t": "ping", "n": 2**60}))
    ev = conn.next_event()
    assert isinstance(ev, p.Rejected)
