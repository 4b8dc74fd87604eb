"""A client connection to a chat session's listener, and the frames of the hot path.

The receive path applies protocol.Connection's rules inline, for speed: frames are cut
from one buffer per read (one compaction per read, not per frame); the first frame must
be an acceptable ``hello``; nothing but pre-auth messages before ``joined``; only client
messages. After the join, consecutive ``say`` frames are checked field by field and
handed to the session as one batch (``ChatSession.say_many``) without building a
dataclass each. Output is queued and written once per turn of the loop (``flush``), so
a burst costs one write system call per connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from chmail import protocol as p
from chmail.chserver.chatstore import StoredMessage
from chmail.errors import FrameTooLarge, RemoteProtocolError

if TYPE_CHECKING:
    from chmail.chserver.sessions import ChatSession

log = logging.getLogger(__name__)

_pack = msgpack.Packer(use_bin_type=True).pack
_LENGTH_FROM = p.LENGTH.unpack_from
_unpack = functools.partial(msgpack.unpackb, raw=False, strict_map_key=True)
_SAY_KEYS = {"t", "id", "cid", "text"}


def _decode(body: bytearray) -> dict[str, Any]:
    try:
        obj = _unpack(body)
    except Exception:  # msgpack raises several unrelated types on garbage
        raise RemoteProtocolError("frame is not valid msgpack") from None
    if type(obj) is not dict or type(obj.get("t")) is not str:
        raise RemoteProtocolError("a frame must hold a msgpack map with a string 't'")
    return obj


def _say_fields(obj: dict[str, Any]) -> tuple[int, str, str] | None:
    """``(id, cid, text)`` of a well-typed ``say`` map, else None (the slow path judges)."""
    rid, cid, text = obj.get("id", 0), obj.get("cid"), obj.get("text")
    if (
        type(rid) is int
        and 0 <= rid <= p.MAX_ID
        and type(cid) is str
        and type(text) is str
        and obj.keys() <= _SAY_KEYS
    ):
        return rid, cid, text
    return None


def chat_frame(m: StoredMessage) -> bytes:
    """The ``chat`` push of ``m`` (hot path: packed straight from a dict, like p.encode)."""
    body = _pack(
        {"t": "chat", "seq": m.seq, "login": m.sender, "cid": m.cid, "text": m.text, "ts": m.ts}
    )
    return p.LENGTH.pack(len(body)) + body  # type: ignore[no-any-return]


def said_frame(rid: int, seq: int, cid: str) -> bytes:
    body = _pack({"t": "said", "id": rid, "seq": seq, "cid": cid})
    return p.LENGTH.pack(len(body)) + body  # type: ignore[no-any-return]


def said_many_frame(ids: list[int], seqs: list[int], cids: list[str]) -> bytes:
    body = _pack({"t": "said_many", "ids": ids, "seqs": seqs, "cids": cids})
    return p.LENGTH.pack(len(body)) + body  # type: ignore[no-any-return]


class SessionConn(asyncio.Protocol):
    """One client connection to a session's listener (see the module's rules)."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.conn = p.Connection(p.Role.SERVER, max_frame=session.max_frame)
        self.transport: asyncio.Transport | None = None
        self.login = ""
        self._out: list[bytes] = []
        self.last_rx = session.loop_time()
        self._buf = bytearray()
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
        self.last_rx = self.session.loop_time()
        buf = self._buf
        buf += data
        off, end, limit = 0, len(buf), self.session.max_frame
        says: list[tuple[int, str, str]] = []  # consecutive ``say`` requests, in order
        try:
            while end - off >= 4:
                (size,) = _LENGTH_FROM(buf, off)
                if size > limit:
                    raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {limit}")
                if end - off - 4 < size:
                    break
                body = buf[off + 4 : off + 4 + size]
                off += 4 + size
                if self.login:  # joined: ``say`` is the hot path
                    obj = _decode(body)
                    if obj["t"] == "say":
                        item = _say_fields(obj)
                        if item is not None:
                            says.append(item)
                            continue
                    if says:
                        self.session.say_many(self, says)
                        says = []
                    self._message(obj)
                else:
                    self._message(p.decode_obj(bytes(body)))
                if self.transport is None or self.transport.is_closing():
                    break
        except RemoteProtocolError as exc:
            if says:  # the well-formed messages before the broken frame still count
                self.session.say_many(self, says)
                says = []
            self.write(p.encode(p.Error(code=exc.code, message=exc.message)))
            self.close()
        if says and self.transport is not None and not self.transport.is_closing():
            self.session.say_many(self, says)
        del buf[:off]
        self.session.flush_out()

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
