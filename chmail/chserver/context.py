"""One client connection as request handlers see it: who it is, and how to answer.

``login`` is set only by a successful auth (never by anything a client claims later);
``send`` never waits: a client whose unread output passes ``max_write_buffer`` is
dropped, so one that stops reading cannot hold up anybody else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from chmail import protocol as p
from chmail.errors import AuthError, LocalProtocolError

if TYPE_CHECKING:
    from chmail.chserver.server import ChServer

log = logging.getLogger(__name__)


class Context:
    """One client connection, as handlers see it."""

    __slots__ = (
        "_inflight",
        "_link",
        "auth_failures",
        "authenticating",
        "closed",
        "conn",
        "data",
        "direct",
        "host",
        "id",
        "last_rx",
        "last_tx",
        "login",
        "loop",
        "peer_ip",
        "server",
        "transport",
    )

    def __init__(self, server: ChServer, transport: asyncio.Transport, conn_id: int) -> None:
        self.server = server
        self.transport = transport
        self.id = conn_id
        self.conn = p.Connection(p.Role.SERVER, max_frame=server.config.max_frame)
        peer = transport.get_extra_info("peername")
        self.peer_ip: str = str(peer[0]) if peer else ""
        self.login: str | None = None  # set by a successful auth, never by a claim
        self.host = ""  # the host the client advertised at auth
        self.direct = False
        self.closed = False
        self.authenticating = False
        self.auth_failures = 0
        # the loop, kept: asyncio.get_running_loop() costs a getpid() system call (3.11)
        self.loop = asyncio.get_running_loop()
        now = self.loop.time()
        self.last_rx = now
        self.last_tx = now
        self.data: dict[str, Any] = {}  # per-connection state of extensions
        self._inflight = 0

    @property
    def authenticated(self) -> bool:
        return self.login is not None

    def require_login(self) -> str:
        """The authenticated login; ``not_authenticated`` error for anything else (e.g. a
        chat-session connection that joined a session but never logged in)."""
        if self.login is None:
            raise AuthError("log in first", code=p.E_NOT_AUTHENTICATED)
        return self.login

    def send(self, msg: p.Message) -> bool:
        """Queue ``msg``; False when the connection is closed or was dropped as stalled."""
        if self.closed or self.conn.state is p.State.CLOSED:
            return False
        try:
            data = self.conn.send(msg)
        except LocalProtocolError:
            log.exception("conn %d: refusing to send %s", self.id, msg.t)
            return False
        return self._write(data)

    def send_frame(self, frame: bytes) -> bool:
        """Queue an encoded frame of a message the server may send (for instance
        ``protocol.allocated_frame``); False as for :meth:`send`."""
        if self.closed or self.conn.state is p.State.CLOSED:
            return False
        return self._write(frame)

    def _write(self, data: bytes) -> bool:
        self.transport.write(data)
        self.last_tx = self.loop.time()
        if self.transport.get_write_buffer_size() > self.server.config.max_write_buffer:
            log.info("conn %d (%s): not reading its data; dropped", self.id, self.login)
            self.abort()
            return False
        return True

    def fail(self, code: str, message: str) -> None:
        """Send a connection-level ``error`` and close (the stream cannot go on)."""
        if self.closed:
            return
        try:
            self._write(
                p.encode(p.Error(code=code, message=message), max_frame=p.DEFAULT_MAX_FRAME)
            )
        finally:
            self.close_soon()

    def close(self, reason: str = "") -> None:
        """Say ``bye`` and close once the queued data is written."""
        if self.closed:
            return
        self.send(p.Bye(reason=reason))
        self.close_soon()

    def close_soon(self) -> None:
        self.conn.close()
        self.closed = True
        self.transport.close()

    def abort(self) -> None:
        self.conn.close()
        self.closed = True
        self.transport.abort()
