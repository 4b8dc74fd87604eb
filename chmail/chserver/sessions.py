"""Chat sessions: one TCP listener per open session, on the mail's port (S109-S111).

Rules (docs/protocol.md, "Calls and chat sessions", is the normative text):

* A session listens on its port and speaks the CH framing of protocol.py. Each side
  sends ``hello``; the client's first request is ``join`` with the token the CH server
  gave that login for this session (``call_state``). ``joined`` authenticates the link.
* Every message gets the session's next sequence number. ``(sender, cid)`` names a
  message: a resend (the same ``cid`` again after a reconnect) is answered with the
  stored ``seq`` and stored nothing new. A client never repeats a ``cid`` on one
  connection; the server does not look for that while a login has a single connection
  (see ``_index``), only across connections.
* A message is pushed (``chat``) to the other members at once, in ``seq`` order on
  every connection, and stored with everything else that arrived in the same turn of
  the event loop, in every session of the server (one transaction, see
  SessionBackend.pending); then its sender is acknowledged: after a commit each sender
  gets one ``said_many`` for all its messages in it (a resend of a stored message gets
  ``said``). Acknowledged means stored: it survives a crash of the server. ``join`` with
  ``last_seq`` replays what came after it, then the live stream follows (see
  RESTART_GAP for crash safety).
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
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol as TypingProtocol

from chmail import protocol as p
from chmail.chserver.chatlog import (  # the limits, re-exported
    MAX_CID as MAX_CID,
)
from chmail.chserver.chatlog import (
    MAX_UNSTORED as MAX_UNSTORED,
)
from chmail.chserver.chatlog import (
    RESTART_GAP as RESTART_GAP,
)
from chmail.chserver.chatlog import Batch, SessionMessages
from chmail.chserver.sessionconn import Msg, SessionConn

log = logging.getLogger(__name__)


def session_secret(key: bytes, session_id: int) -> bytes:
    """The per-session secret that join tokens are made with (a direct host gets it)."""
    return hmac.new(key, f"chmail-chat-session\n{session_id}".encode(), hashlib.sha256).digest()


def join_token(secret: bytes, login: str) -> str:
    mac = hmac.new(secret, f"join\n{login}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


class SessionBackend(TypingProtocol):
    """Where a session keeps what it must remember. Calls must not block."""

    def pending(self, session: SessionMessages) -> None:
        """``session`` has a batch to store: call ``session.commit()`` soon (in this turn
        of the loop), or store it with others' and call ``session.stored(err)``."""

    def persist(self, batches: list[Batch]) -> BaseException | None:
        """Store ``batches`` in one transaction; the error (not raised) if that failed."""

    def joined(self, session: ChatSession, login: str) -> None: ...
    def left(self, session: ChatSession, login: str) -> None: ...
    def read(self, session: ChatSession, login: str, seq: int) -> None: ...
    def ended(self, session: ChatSession, reason: str, by: str) -> None: ...


class MemoryBackend:
    """Keeps nothing beyond the session's own memory (direct mode, tests)."""

    def pending(self, session: SessionMessages) -> None:
        asyncio.get_running_loop().call_soon(session.commit)

    def persist(self, batches: list[Batch]) -> BaseException | None:
        return None

    def joined(self, session: ChatSession, login: str) -> None:
        pass

    def left(self, session: ChatSession, login: str) -> None:
        pass

    def read(self, session: ChatSession, login: str, seq: int) -> None:
        pass

    def ended(self, session: ChatSession, reason: str, by: str) -> None:
        pass


class ChatSession(SessionMessages):
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
        conn_timeout: float = 45.0,
        history: Iterable[Msg] = (),
        members: dict[str, int] | None = None,
        last_active: float | None = None,
        reopened: bool = False,
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
        self.conn_timeout = conn_timeout
        self._init_messages(history, reopened=reopened)
        self.members: dict[str, int] = dict(members or {})  # admitted login -> read seq
        self.conns: set[SessionConn] = set()  # joined
        self.every_conn: set[SessionConn] = set()  # joined or not
        self.last_active = last_active if last_active is not None else time.time()
        self.ended = False
        self.end_reason = ""
        self.server: asyncio.Server | None = None
        self.on_end: list[Callable[[ChatSession, str, str], None]] = []
        self._dirty: set[SessionConn] = set()
        self._flush_soon = False
        self._loop = asyncio.get_running_loop()
        self._idle = self._loop.call_later(idle_timeout, self._check_idle)
        self._sweeper = self._loop.call_later(conn_timeout / 2, self._sweep)

    # ------------------------------------------------------------------ lifecycle

    async def listen(self, host: str, port: int | None = None) -> int:
        """Open the listener (on ``port``, default the session's); return the bound port."""
        self.server = await self._loop.create_server(
            lambda: SessionConn(self), host, self.port if port is None else port, reuse_address=True
        )
        bound: int = self.server.sockets[0].getsockname()[1]
        if self.port == 0:
            self.port = bound
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
        self._sweeper.cancel()
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
        self._sweeper.cancel()
        for c in list(self.conns):
            c.close()
        self.conns.clear()
        if self.server is not None:
            self.server.close()

    def loop_time(self) -> float:
        return self._loop.time()

    def dirty(self, conn: SessionConn) -> None:
        """``conn`` has output queued; write it at the end of this turn of the loop."""
        self._dirty.add(conn)
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self.flush_out)

    def flush_out(self) -> None:
        self._flush_soon = False
        dirty, self._dirty = self._dirty, set()
        for c in dirty:
            c.flush()

    def touch(self) -> None:
        self.last_active = time.time()

    def _sweep(self) -> None:
        """Drop connections silent for ``conn_timeout`` (clients ping; the peer is gone)."""
        limit = self._loop.time() - self.conn_timeout
        for c in [c for c in self.every_conn if c.last_rx < limit]:
            log.info(
                "chat session %d: %s silent for %.0fs; dropped", self.id, c.login, self.conn_timeout
            )
            c.abort()
        self._sweeper = self._loop.call_later(self.conn_timeout / 2, self._sweep)

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
            self.say(conn, msg.id, msg.cid, msg.text)
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
        good = msg.session == self.id and hmac.compare_digest(
            msg.token.encode(), join_token(self.secret, msg.login).encode()
        )
        if self.ended or not good or conn.login:
            reason = "this chat has ended" if self.ended else "this chat token is not valid here"
            conn.send(p.Error(code=p.E_AUTH_FAILED, message=reason, id=msg.id))
            conn.close()
            return
        conn.login = msg.login
        conn.batch = msg.batch
        self._joined_as(conn)
        self.members.setdefault(msg.login, 0)  # the token proves the server admitted it
        first = msg.login not in self.online()
        self.conns.add(conn)
        self.touch()
        conn.send(
            p.Joined(
                id=msg.id,
                session=self.id,
                login=msg.login,
                members=self.online(),
                head=self.head,
                subject=self.subject,
                message_id=self.message_id,
                max_text=self.max_text,
            )
        )
        self.replay(conn, msg.last_seq)
        for login, seq in self.members.items():
            if login != msg.login and seq:
                conn.send(p.Read(login=login, seq=seq))
        if first:
            self._relay(conn, p.Member(login=msg.login, state="joined"))
            self.backend.joined(self, msg.login)

    def _read(self, conn: SessionConn, msg: p.Read) -> None:
        seq = min(msg.seq, self.head)
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
        self.every_conn.discard(conn)
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        if conn.login and conn.login not in self.online() and not self.ended:
            self._relay(None, p.Member(login=conn.login, state="away"))
