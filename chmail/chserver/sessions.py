"""Chat sessions: one TCP listener per open session, on the mail's port (S109-S111).

Rules (docs/protocol.md, "Calls and chat sessions", is the normative text):

* A session listens on its port and speaks the CH framing of protocol.py. Each side
  sends ``hello``; the client's first request is ``join`` with the token the CH server
  gave that login for this session (``call_state``). ``joined`` authenticates the link.
* Every message gets the session's next sequence number. ``(sender, cid)`` names a
  message: a resend is answered with the stored ``seq`` and stored nothing new.
* A message is acknowledged (``said``) and pushed (``chat``) only once it is stored
  (the backend's group commit), in ``seq`` order on every connection. So whatever any
  client has seen survives a crash of the server, and ``last_seq`` is safe to resume
  from: ``join`` with ``last_seq`` replays what came after it, then the live stream.
* ``typing`` and ``read`` are relayed to the other members; read state is remembered.
* ``leave``: that member goes (when the last one leaves the session ends); ``end``: the
  session ends for everyone; no activity for the idle timeout ends it too. An ended
  session pushes ``ended`` and closes its listener.
* Limits: a text over ``max_text`` bytes is refused (``limit``); a connection that has
  more than ``max_buffer`` bytes queued (it stopped reading) is dropped, and catches up
  by ``last_seq`` when it comes back. Neither harms the other members.

The same class serves relay mode (the CH server hosts it; messages go to SQLite) and
direct mode (a user's client hosts it; see chmail.client.chat).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol as TypingProtocol

from chmail import protocol as p
from chmail.chserver.chatstore import Done, MessageRow, StoredMessage
from chmail.errors import RemoteProtocolError

log = logging.getLogger(__name__)

MAX_CID = 64  # bytes of a client message id


def session_secret(key: bytes, session_id: int) -> bytes:
    """The per-session secret that join tokens are made with (a direct host gets it)."""
    return hmac.new(key, f"chmail-chat-session\n{session_id}".encode(), hashlib.sha256).digest()


def join_token(secret: bytes, login: str) -> str:
    mac = hmac.new(secret, f"join\n{login}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


class SessionBackend(TypingProtocol):
    """Where a session keeps what it must remember. Calls must not block."""

    def persist(self, rows: list[MessageRow], done: Done) -> None: ...
    def joined(self, session: ChatSession, login: str) -> None: ...
    def left(self, session: ChatSession, login: str) -> None: ...
    def read(self, session: ChatSession, login: str, seq: int) -> None: ...
    def ended(self, session: ChatSession, reason: str, by: str) -> None: ...


class MemoryBackend:
    """Keeps nothing beyond the session's own memory (direct mode, tests)."""

    def persist(self, rows: list[MessageRow], done: Done) -> None:
        done(None)

    def joined(self, session: ChatSession, login: str) -> None:
        pass

    def left(self, session: ChatSession, login: str) -> None:
        pass

    def read(self, session: ChatSession, login: str, seq: int) -> None:
        pass

    def ended(self, session: ChatSession, reason: str, by: str) -> None:
        pass


class ChatSession:
    """One chat: its members, its messages in seq order, and its listener."""

    def __init__(
        self,
        *,
        id: int,
        port: int,
        owner: str,
        message_id: str,
        subject: str,
        secret: bytes,
        backend: SessionBackend,
        max_text: int = 16384,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        max_buffer: int = 1 << 20,
        idle_timeout: float = 600.0,
        history: Iterable[StoredMessage] = (),
        members: dict[str, int] | None = None,
        last_active: float | None = None,
    ) -> None:
        self.id = id
        self.port = port
        self.owner = owner
        self.message_id = message_id
        self.subject = subject
        self.secret = secret
        self.backend = backend
        self.max_text = max_text
        self.max_frame = max_frame
        self.max_buffer = max_buffer
        self.idle_timeout = idle_timeout
        self.messages: list[StoredMessage] = list(history)
        self.by_cid = {(m.sender, m.cid): m.seq for m in self.messages}
        self.next_seq = (self.messages[-1].seq if self.messages else 0) + 1
        self.members: dict[str, int] = dict(members or {})  # admitted login -> read seq
        self.conns: set[SessionConn] = set()
        self.last_active = last_active if last_active is not None else time.time()
        self.ended = False
        self.end_reason = ""
        self.server: asyncio.Server | None = None
        self.on_end: list[Callable[[ChatSession, str, str], None]] = []
        self._pending: dict[tuple[str, str], list[tuple[SessionConn, int]]] = {}
        self._batch: list[StoredMessage] = []
        self._loop = asyncio.get_running_loop()
        self._idle = self._loop.call_later(idle_timeout, self._check_idle)

    # ------------------------------------------------------------------ lifecycle

    async def listen(self, host: str, port: int | None = None) -> int:
        """Open the listener (on ``port``, default the session's); return the bound port."""
        self.server = await self._loop.create_server(
            lambda: SessionConn(self), host, self.port if port is None else port, reuse_address=True
        )
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    def admit(self, login: str) -> str:
        """Let ``login`` join; return its token."""
        self.members.setdefault(login, 0)
        return join_token(self.secret, login)

    def online(self) -> list[str]:
        return sorted({c.login for c in self.conns if c.login})

    def end(self, reason: str, by: str = "") -> None:
        """End the session for everyone and close its listener (idempotent)."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self._idle.cancel()
        data = p.encode(p.Ended(reason=reason, by=by))
        for c in list(self.conns):
            c.write(data)
            c.close()
        self.conns.clear()
        if self.server is not None:
            self.server.close()
        self.backend.ended(self, reason, by)
        for cb in self.on_end:
            cb(self, reason, by)

    def shutdown(self) -> None:
        """Close the listener and connections without ending the session (server stop)."""
        self._idle.cancel()
        for c in list(self.conns):
            c.close()
        self.conns.clear()
        if self.server is not None:
            self.server.close()

    def touch(self) -> None:
        self.last_active = time.time()

    def _check_idle(self) -> None:
        left = self.last_active + self.idle_timeout - time.time()
        if left <= 0:
            log.info("chat session %d on port %d is idle; ending it", self.id, self.port)
            self.end("idle")
        else:
            self._idle = self._loop.call_later(left, self._check_idle)

    # ------------------------------------------------------------------ requests

    def handle(self, conn: SessionConn, msg: p.Message) -> None:
        if isinstance(msg, p.Say):
            self._say(conn, msg)
        elif isinstance(msg, p.Ping):
            conn.send(p.Pong(n=msg.n))
        elif isinstance(msg, p.Typing):
            self.touch()
            self._relay(conn, p.Typing(login=conn.login, active=msg.active))
        elif isinstance(msg, p.Read):
            self._read(conn, msg)
        elif isinstance(msg, p.Join):
            self._join(conn, msg)
        elif isinstance(msg, p.Leave):
            conn.send(p.Ok(id=msg.id))
            self._leave(conn.login)
        elif isinstance(msg, p.End):
            conn.send(p.Ok(id=msg.id))
            self.end("ended", by=conn.login)
        elif isinstance(msg, p.Bye):
            conn.close()
        elif isinstance(msg, p.Rejected):
            conn.send(p.Error(code=msg.code, message=msg.reason, id=msg.id))
        elif isinstance(msg, p.Unknown):
            conn.send(
                p.Error(code=p.E_UNKNOWN_TYPE, message=f"unknown type {msg.type_name!r}", id=msg.id)
            )
        elif isinstance(msg, p.Hello | p.Pong):
            pass
        else:
            conn.send(
                p.Error(
                    code=p.E_INVALID,
                    message=f"{msg.t!r} is not a chat session request",
                    id=getattr(msg, "id", None),
                )
            )

    def _join(self, conn: SessionConn, msg: p.Join) -> None:
        good = (
            msg.session == self.id
            and msg.login in self.members
            and hmac.compare_digest(msg.token, join_token(self.secret, msg.login))
        )
        if self.ended or not good or conn.login:
            reason = "this chat has ended" if self.ended else "this chat token is not valid here"
            conn.send(p.Error(code=p.E_AUTH_FAILED, message=reason, id=msg.id))
            conn.close()
            return
        conn.login = msg.login
        first = msg.login not in self.online()
        self.conns.add(conn)
        self.touch()
        conn.send(
            p.Joined(
                id=msg.id,
                session=self.id,
                login=msg.login,
                members=self.online(),
                head=self.messages[-1].seq if self.messages else 0,
                subject=self.subject,
                message_id=self.message_id,
                max_text=self.max_text,
            )
        )
        start = bisect.bisect_right(self.messages, msg.last_seq, key=lambda m: m.seq)
        for m in self.messages[start:]:
            conn.write(p.encode(_chat(m), max_frame=self.max_frame))
        for login, seq in self.members.items():
            if login != msg.login and seq:
                conn.send(p.Read(login=login, seq=seq))
        if first:
            self._relay(conn, p.Member(login=msg.login, state="joined"))
            self.backend.joined(self, msg.login)

    def _say(self, conn: SessionConn, msg: p.Say) -> None:
        cid = msg.cid
        if not cid or len(cid.encode()) > MAX_CID:
            conn.send(
                p.Error(
                    code=p.E_INVALID,
                    id=msg.id,
                    message=f"a message needs a client id of 1 to {MAX_CID} bytes",
                )
            )
            return
        if len(msg.text.encode()) > self.max_text:
            conn.send(
                p.Error(
                    code=p.E_LIMIT,
                    id=msg.id,
                    message=f"messages are limited to {self.max_text} bytes; split it into several",
                )
            )
            return
        key = (conn.login, cid)
        seq = self.by_cid.get(key)
        if seq is not None:  # a resend of a stored message
            conn.send(p.Said(id=msg.id, seq=seq, cid=cid))
            return
        waiting = self._pending.get(key)
        if waiting is not None:  # a resend of one being stored
            waiting.append((conn, msg.id))
            return
        self._pending[key] = [(conn, msg.id)]
        self._batch.append(StoredMessage(self.next_seq, conn.login, cid, msg.text, time.time()))
        self.next_seq += 1
        self.touch()
        if len(self._batch) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        rows = [(self.id, m.seq, m.sender, m.cid, m.text, m.ts) for m in batch]
        loop = self._loop

        def done(err: BaseException | None) -> None:
            loop.call_soon_threadsafe(self._stored, batch, err)

        self.backend.persist(rows, done)

    def _stored(self, batch: list[StoredMessage], err: BaseException | None) -> None:
        if err is not None:
            for m in batch:
                for c, rid in self._pending.pop((m.sender, m.cid), []):
                    c.send(
                        p.Error(
                            code=p.E_INTERNAL,
                            id=rid,
                            message="the message could not be stored; send it again",
                        )
                    )
            return
        for m in batch:
            self.messages.append(m)
            self.by_cid[(m.sender, m.cid)] = m.seq
            waiting = self._pending.pop((m.sender, m.cid), [])
            data = p.encode(_chat(m), max_frame=self.max_frame)
            told = set()
            for c, rid in waiting:
                c.send(p.Said(id=rid, seq=m.seq, cid=m.cid))
                told.add(c)
            for c in list(self.conns):
                if c not in told:
                    c.write(data)

    def _read(self, conn: SessionConn, msg: p.Read) -> None:
        last = self.messages[-1].seq if self.messages else 0
        seq = min(msg.seq, last)
        if seq <= self.members.get(conn.login, 0):
            return
        self.members[conn.login] = seq
        self._relay(conn, p.Read(login=conn.login, seq=seq))
        self.backend.read(self, conn.login, seq)

    def _leave(self, login: str) -> None:
        self.members.pop(login, None)
        for c in [c for c in self.conns if c.login == login]:
            self.conns.discard(c)
            c.close()
        self._relay(None, p.Member(login=login, state="left"))
        self.backend.left(self, login)
        if not self.members:
            self.end("ended", by=login)

    def _relay(self, sender: SessionConn | None, msg: p.Message) -> None:
        data = p.encode(msg, max_frame=self.max_frame)
        for c in list(self.conns):
            if c is not sender:
                c.write(data)

    def lost(self, conn: SessionConn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        if conn.login and conn.login not in self.online() and not self.ended:
            self._relay(None, p.Member(login=conn.login, state="away"))


def _chat(m: StoredMessage) -> p.Chat:
    return p.Chat(seq=m.seq, login=m.sender, cid=m.cid, text=m.text, ts=m.ts)


class SessionConn(asyncio.Protocol):
    """One client connection to a session's listener."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.conn = p.Connection(p.Role.SERVER, max_frame=session.max_frame)
        self.transport: asyncio.Transport | None = None
        self.login = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.session.ended:
            transport.close()
            return
        self.send(p.Hello(agent="chmail-session"))

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
        except RemoteProtocolError as exc:
            self.write(p.encode(p.Error(code=exc.code, message=exc.message)))
            self.close()
            return
        for msg in self.conn.events():
            if self.transport is None or self.transport.is_closing():
                return
            self.session.handle(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost(self)
        self.transport = None

    def send(self, msg: p.Message) -> None:
        if self.transport is None or self.conn.state is p.State.CLOSED:
            return
        self.write(self.conn.send(msg))

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(data)
        if t.get_write_buffer_size() > self.session.max_buffer:
            log.warning("dropping a chat connection of %s that stopped reading", self.login)
            t.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
