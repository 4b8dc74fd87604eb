"""A client connection to a chat session's listener, and the frames of the hot path.

The receive path applies protocol.Connection's rules inline, for speed. Frames are cut
from the bytes of a read without copying them (a partial frame at the end is kept for
the next read). After the join, each frame is first decoded as a ``say`` by msgspec's
typed msgpack decoder (:class:`_Say`: the types are checked in C, unknown extra keys
ignored as everywhere in the protocol, and no dict or key string is built), and
consecutive ``say`` frames are collected as three parallel lists (request ids, client
ids, texts) and handed to the session as one batch (``ChatSession.say_many``). Any
other frame, or one that is not a well-typed ``say``, takes the general path of
protocol.py (``decode_obj``, ``from_wire``): a body that is not exactly one msgpack
map with a string ``t`` breaks the stream. The first frame must be an acceptable
``hello``; nothing but pre-auth messages before ``joined``; only client messages.
Output is queued and written once per turn of the loop (``flush``), so a burst costs
one write system call per connection.

The pushes of new messages are built here too. A client that joined with ``batch``
gets a run of messages from one sender as one ``chats`` frame (one msgpack map with the
lists of client ids and texts, split to stay under the frame limit): the server packs it
with one call and the client decodes one map instead of one per message. Others get one
``chat`` frame per message; for those, the fields that do not change in a run (``t``,
``login``, ``ts``) are packed once and each message packs only ``seq``, ``cid`` and
``text`` (a msgpack map's keys may come in any order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from chmail import protocol as p
from chmail.errors import FrameTooLarge, RemoteProtocolError

if TYPE_CHECKING:
    from chmail.chserver.sessions import ChatSession

log = logging.getLogger(__name__)

# msgspec's encoder: the same bytes as msgpack's Packer(use_bin_type=True), ~4x faster
_pack = msgspec.msgpack.Encoder().encode
_LENGTH_FROM = p.LENGTH.unpack_from
_LENGTH = p.LENGTH.pack
_MAX_ID = p.MAX_ID


class _Say(msgspec.Struct, gc=False):
    """A frame decoded on the fast path: a ``say`` when ``t == "say"`` (protocol.Say)."""

    t: str
    id: int = 0
    cid: str = ""
    text: str = ""


_decode_say = msgspec.msgpack.Decoder(_Say).decode

# A stored chat message: (seq, sender login, client id, text, unix time).
Msg = tuple[int, str, str, str, float]


def chat_prefix(login: str, ts: float) -> bytes:
    """The constant part of ``login``'s ``chat`` frames stamped ``ts``: a 6-entry map
    header and the ``t``, ``login`` and ``ts`` entries (see :func:`chat_frames`)."""
    # packing a 6-tuple gives a fixarray header (0x96) and then the items: key, value, ...
    items: bytes = _pack(("t", "chat", "login", login, "ts", ts))
    return b"\x86" + items[1:]


def chat_frames(prefix: bytes, seq: int, cids: Iterable[str], texts: Iterable[str]) -> bytes:
    """The ``chat`` frames of consecutive messages from one sender, from ``seq`` on."""
    out: list[bytes | memoryview] = []
    extend, n = out.extend, len(prefix) - 1
    for cid, text in zip(cids, texts, strict=True):
        tail = _pack(("seq", seq, "cid", cid, "text", text))  # 0x96, then the 3 entries
        extend((_LENGTH(n + len(tail)), prefix, memoryview(tail)[1:]))
        seq += 1
    return b"".join(out)


def chats_frames(
    login: str, ts: float, seq: int, cids: list[str], texts: list[str], max_frame: int
) -> bytes:
    """The ``chats`` push of consecutive messages from one sender from ``seq`` on, as
    frames of at most ``max_frame`` bytes (one unless the run is long)."""
    body: bytes = _pack(
        {"t": "chats", "login": login, "ts": ts, "seq": seq, "cids": cids, "texts": texts}
    )
    n = len(cids)
    if len(body) <= max_frame or n == 1:  # one message fits: its text is capped below
        return _LENGTH(len(body)) + body
    step = -(-n // (len(body) // (max_frame * 3 // 4) + 1))  # parts of ~3/4 of the limit
    return b"".join(
        chats_frames(login, ts, seq + i, cids[i : i + step], texts[i : i + step], max_frame)
        for i in range(0, n, step)
    )


def said_frame(rid: int, seq: int, cid: str) -> bytes:
    body = _pack({"t": "said", "id": rid, "seq": seq, "cid": cid})
    return _LENGTH(len(body)) + body


SAID_MANY_MAX = 512  # entries per said_many frame: 512 * (9 + 9 + 66) bytes < 64 KiB


def said_many_frame(ids: list[int], seqs: list[int], cids: list[str]) -> bytes:
    """``said_many`` frames for these acknowledgements (one per SAID_MANY_MAX)."""
    out = []
    for i in range(0, len(ids), SAID_MANY_MAX):
        j = i + SAID_MANY_MAX
        body = _pack({"t": "said_many", "ids": ids[i:j], "seqs": seqs[i:j], "cids": cids[i:j]})
        out.append(_LENGTH(len(body)) + body)
    return b"".join(out)


class SessionConn(asyncio.Protocol):
    """One client connection to a session's listener (see the module's rules)."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.conn = p.Connection(p.Role.SERVER, max_frame=session.max_frame)
        self.transport: asyncio.Transport | None = None
        self.login = ""
        self.batch = False  # joined asking for ``chats`` pushes
        self.since = 0  # the session's next seq when this connection joined
        self._out: list[bytes] = []
        self.last_rx = session.loop_time()
        # The start of a frame not received whole yet, and how many bytes it takes to go
        # on: a frame that trickles in is appended to here, not re-copied on every read.
        self._rest = bytearray()
        self._need = 0
        self._hello = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.session.every_conn.add(self)
        if self.session.ended:
            transport.close()
            return
        self.send(p.Hello(agent="chmail-session"))
        self.flush()

    def data_received(self, data: bytes) -> None:
        session = self.session
        self.last_rx = session.loop_time()
        if self._rest:
            self._rest += data
            if len(self._rest) < self._need:
                return
            buf, self._rest = bytes(self._rest), bytearray()
        else:
            buf = data
        off, end, limit = 0, len(buf), session.max_frame
        # consecutive well-typed ``say`` requests, in order, as three parallel lists
        rids: list[int] = []
        cids: list[str] = []
        texts: list[str] = []
        view = memoryview(buf)  # buf is bytes: slicing the view copies nothing
        try:
            while end - off >= 4:
                (size,) = _LENGTH_FROM(buf, off)
                if size > limit:
                    raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {limit}")
                if end - off - 4 < size:
                    break
                body = view[off + 4 : off + 4 + size]
                off += 4 + size
                if self.login:  # joined: ``say`` is the hot path
                    try:
                        m = _decode_say(body)
                    except msgspec.MsgspecError:
                        pass  # not a well-formed say: the general path judges it
                    else:
                        if m.t == "say" and 0 <= m.id <= _MAX_ID:
                            rids.append(m.id)
                            cids.append(m.cid)
                            texts.append(m.text)
                            continue
                obj = p.decode_obj(bytes(body))
                if rids:
                    session.say_many(self, rids, cids, texts)
                    rids, cids, texts = [], [], []
                self._message(obj)
                if self.transport is None or self.transport.is_closing():
                    break
        except RemoteProtocolError as exc:
            if rids:  # the well-formed messages before the broken frame still count
                session.say_many(self, rids, cids, texts)
                rids = []
            self.write(p.encode(p.Error(code=exc.code, message=exc.message)))
            self.close()
        if rids and self.transport is not None and not self.transport.is_closing():
            session.say_many(self, rids, cids, texts)
        if off < end and self.transport is not None and not self.transport.is_closing():
            self._rest = bytearray(buf[off:])
            self._need = 4 + _LENGTH_FROM(buf, off)[0] if end - off >= 4 else 4
        session.flush_out()

    def _message(self, obj: dict[str, Any]) -> None:
        try:
            msg = p.from_wire(obj)
        except RemoteProtocolError as exc:
            if not self._hello:
                raise
            rid = obj.get("id")
            self.send(p.Error(code=exc.code, message=exc.message, id=_req_id(rid)))
            return
        if not self._hello:
            if not isinstance(msg, p.Hello):
                raise RemoteProtocolError(f"expected hello first, got {obj['t']!r}")
            if msg.version != p.PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    f"protocol version {msg.version} is not supported; this side speaks "
                    f"version {p.PROTOCOL_VERSION}",
                    code=p.E_VERSION,
                )
            self._hello = True
            return
        if not isinstance(msg, p.Unknown):
            rid = getattr(msg, "id", None)
            if "c" not in msg.sender:
                self.send(
                    p.Error(
                        code=p.E_INVALID,
                        id=_req_id(rid),
                        message=f"{msg.t!r} may not be sent by the client",
                    )
                )
                return
            if not self.login and not msg.pre_auth:
                self.send(
                    p.Error(
                        code=p.E_NOT_AUTHENTICATED,
                        id=_req_id(rid),
                        message=f"{msg.t!r} before authentication",
                    )
                )
                return
        self.session.handle(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._out.clear()
        self.session.lost(self)
        self.transport = None

    def send(self, msg: p.Message) -> None:
        if self.transport is None or self.conn.state is p.State.CLOSED:
            return
        self.queue(self.conn.send(msg))

    def queue(self, data: bytes) -> None:
        if self.transport is None:
            return
        if not self._out:
            self.session.dirty(self)
        self._out.append(data)

    def write(self, data: bytes) -> None:
        self.queue(data)
        self.flush()

    def flush(self) -> None:
        t = self.transport
        if not self._out or t is None or t.is_closing():
            self._out.clear()
            return
        if t.get_write_buffer_size() > self.session.max_buffer:
            # what we wrote before is still not read: the peer stopped reading. (The test
            # is made before writing, so one large write, a history replay, is fine.)
            log.warning("dropping a chat connection of %s that stopped reading", self.login)
            self._out.clear()
            t.abort()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        t.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()


def _req_id(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= p.MAX_ID
    return value if ok else None  # type: ignore[return-value]
