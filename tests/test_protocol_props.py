"""Property and fuzz tests of the protocol decoder (hypothesis + a time-bounded random loop)."""

from __future__ import annotations

import dataclasses
import random
import time

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from chmail import protocol as p
from chmail.errors import LocalProtocolError, RemoteProtocolError

ids = st.integers(min_value=0, max_value=p.MAX_ID)
text = st.text(max_size=40)

messages = st.one_of(
    st.builds(p.Ping, n=ids),
    st.builds(p.Pong, n=ids),
    st.builds(p.Auth, id=ids, login=text, password=text, host=text, direct=st.booleans()),
    st.builds(
        p.Alloc,
        id=ids,
        message_id=text,
        recipients=st.lists(text, max_size=5),
        thread=st.lists(text, max_size=3),
        context=text,
    ),
    st.builds(p.Presence, id=ids, logins=st.lists(text, max_size=5)),
    st.builds(p.Bye, reason=text),
)


@given(msgs=st.lists(messages, max_size=8), cuts=st.lists(st.integers(1, 50), max_size=40))
@settings(max_examples=300, deadline=None)
def test_encode_decode_round_trip_any_split(msgs: list[p.Message], cuts: list[int]) -> None:
    """Any sequence of messages, cut anywhere, decodes back to itself (pre-auth types aside)."""
    data = b"".join(p.encode(m) for m in [p.Hello(), *msgs])
    server = p.Connection(p.Role.SERVER)
    server.send(p.Hello())
    server.send(p.AuthOk(id=0))  # the server side is logged in: every client type is allowed
    got: list[p.Message] = []
    i = 0
    for n in [*cuts, len(data)]:
        server.receive_data(data[i : i + n])
        got.extend(server.events())
        i += n
        if server.state is p.State.CLOSED:
            break
    expected = [p.Hello(), *msgs]
    # A bye closes the connection: nothing after it is read.
    if any(isinstance(m, p.Bye) for m in msgs):
        expected = expected[: next(i for i, m in enumerate(expected) if isinstance(m, p.Bye)) + 1]
    assert got == expected


@given(data=st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_crash(data: bytes) -> None:
    """Arbitrary bytes give messages, or RemoteProtocolError, never another exception."""
    conn = p.Connection(p.Role.SERVER, max_frame=256)
    try:
        conn.receive_data(data)
    except RemoteProtocolError:
        assert conn.state is p.State.CLOSED
    assert conn._decoder.buffered <= 256 + 4


def test_fuzz_decoder_for_two_seconds() -> None:
    """A seeded random byte loop against the decoder for ~2 s: no crash, bounded buffer."""
    rng = random.Random(20261122)
    seeds = [p.encode(p.Hello()), p.encode(p.Ping(n=1)), p.encode(p.Auth(id=1, login="a"))]
    deadline = time.monotonic() + 2.0
    runs = 0
    while time.monotonic() < deadline:
        conn = p.Connection(p.Role.SERVER, max_frame=512)
        blob = bytearray(b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 4))))
        for _ in range(rng.randint(0, 8)):  # mutate: flip, insert, delete bytes
            if not blob:
                break
            pos = rng.randrange(len(blob))
            op = rng.randrange(3)
            if op == 0:
                blob[pos] = rng.randrange(256)
            elif op == 1:
                blob.insert(pos, rng.randrange(256))
            else:
                del blob[pos]
        try:
            i = 0
            while i < len(blob):
                n = rng.randint(1, 64)
                conn.receive_data(bytes(blob[i : i + n]))
                list(conn.events())
                i += n
        except RemoteProtocolError:
            pass
        assert conn._decoder.buffered <= 512 + 4
        runs += 1
    assert runs > 100


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_every_message_type_decodes_to_what_its_constructor_makes(data: st.DataObject) -> None:
    """Each of the registered types survives encode -> decode as an object equal to the one
    its own constructor makes from the same fields (the decoder fills instances directly)."""
    for t, cls in sorted(p.REGISTRY.items()):
        msg = data.draw(st.builds(cls), label=t)
        try:
            frame = p.encode(msg)
        except (LocalProtocolError, ValueError, TypeError, OverflowError):
            continue  # not encodable (too large, out-of-range int): nothing to decode
        try:
            got = p.decode_body(frame[p.LENGTH.size :])
        except RemoteProtocolError:
            continue  # a value the wire rules refuse (e.g. an id beyond 2**53)
        fields = {f.name: getattr(got, f.name) for f in dataclasses.fields(cls)}
        assert type(got) is cls
        assert got == cls(**fields) == msg


# -- the fast decode of the hot frames (msgspec) against the general path

packable_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
values = st.one_of(
    st.none(),
    st.booleans(),
    packable_ints,
    st.sampled_from([p.MAX_ID, p.MAX_ID + 1, -p.MAX_ID, -p.MAX_ID - 1]),
    st.floats(allow_nan=False),
    text,
    st.binary(max_size=8),
    st.lists(st.one_of(text, packable_ints, st.binary(max_size=4)), max_size=3),
    st.dictionaries(text, st.booleans(), max_size=2),
)
field_names = st.sampled_from(
    ["id", "n", "message_id", "recipients", "thread", "context", "login", "port", "host",
     "lease", "expires", "sig", "code", "message", "extra"]
)  # fmt: skip


@given(
    t=st.sampled_from([*p.FAST_TYPES, "auth", "nope"]),
    fields=st.dictionaries(field_names, values, max_size=6),
)
@settings(max_examples=600, deadline=None)
def test_fast_decode_gives_the_general_paths_message(t: str, fields: dict[str, object]) -> None:
    """A frame the fast (msgspec) decoder takes decodes to what the general path gives."""
    body = msgpack.packb({"t": t, **fields}, use_bin_type=True)
    fast = p.decode_fast(body)
    if fast is None:
        return
    assert t in p.FAST_TYPES
    assert fast == p.decode_body(body)
    assert type(fast) is type(p.decode_body(body))


@given(msg=messages)
@settings(max_examples=300, deadline=None)
def test_frames_are_packed_as_msgpack_packs_them(msg: p.Message) -> None:
    """encode() gives the bytes msgpack's Packer(use_bin_type=True) gives for the map."""
    body = msgpack.Packer(use_bin_type=True).pack(msg.to_wire())
    assert p.encode(msg) == p.LENGTH.pack(len(body)) + body


@given(id=ids, lease=ids, expires=ids, login=text, host=text, sig=text, context=text)
@settings(max_examples=200, deadline=None)
def test_allocated_frame_is_the_encoded_message(
    id: int, lease: int, expires: int, login: str, host: str, sig: str, context: str
) -> None:
    """allocated_frame() gives the same bytes as encode(Allocated(...))."""
    kw = dict(id=id, login=login, port=7000, host=host, lease=lease, expires=expires, sig=sig)
    assert p.allocated_frame(**kw, context=context) == p.encode(p.Allocated(**kw, context=context))
