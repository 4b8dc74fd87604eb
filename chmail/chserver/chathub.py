"""The CH server's chat sessions: opens them, finds them, reopens them after a restart.

A relay-mode session is a :class:`~chmail.chserver.sessions.ChatSession` listening on
its port on the server's host; its messages go to the
:class:`~chmail.chserver.messagestore.MessageLog` (``<data>/chat.sqlite``) shared by all
sessions, its membership and end through the server's aiosqlite connection. At start
every session the database still calls open gets its listener back on the same port
with its history, so clients that reconnect with ``last_seq`` lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosqlite

from chmail.chserver import chatstore
from chmail.chserver.chatlog import Batch, SessionMessages
from chmail.chserver.messagestore import MessageLog
from chmail.chserver.sessions import ChatSession, session_secret
from chmail.config import ServerConfig
from chmail.errors import ChatError

log = logging.getLogger(__name__)

EndHook = Callable[[ChatSession, str, str], None]
CHECKPOINT_EVERY = 1.0  # seconds between WAL checkpoints of the message log


class _DbBackend:
    """SessionBackend of relay sessions: messages go to the hub's MessageLog, written on
    the event loop, all sessions' batches of one turn of the loop in one transaction
    (group commit); the rare rest through aiosqlite."""

    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub
        self._pending: list[SessionMessages] = []

    def pending(self, session: SessionMessages) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._commit)
        self._pending.append(session)

    def _commit(self) -> None:
        sessions, self._pending = self._pending, []
        # a session may be listed twice (it committed alone, then had more)
        batches = [(s, b) for s in dict.fromkeys(sessions) if (b := s.batch()) is not None]
        if batches:
            err = self.persist([b for _, b in batches])
            for s, _ in batches:
                s.stored(err)

    def persist(self, batches: list[Batch]) -> BaseException | None:
        assert self.hub.log is not None
        return self.hub.log.append(batches)

    def joined(self, session: ChatSession, login: str) -> None:
        self.hub.spawn(chatstore.add_member(self.hub.db, session.id, login, time.time()))

    def left(self, session: ChatSession, login: str) -> None:
        self.hub.spawn(chatstore.member_left(self.hub.db, session.id, login, time.time()))

    def read(self, session: ChatSession, login: str, seq: int) -> None:
        self.hub.spawn(chatstore.set_read_seq(self.hub.db, session.id, login, seq))

    def ended(self, session: ChatSession, reason: str, by: str) -> None:
        self.hub.sessions.pop(session.id, None)
        self.hub.spawn(
            chatstore.end_session(
                self.hub.db,
                session.id,
                reason=reason,
                now=time.time(),
                last_active=session.last_active,
            )
        )


class SessionHub:
    """All relay-mode chat sessions of one CH server."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        messages_path: str | Path,
        key: bytes,
        config: ServerConfig,
        bind_host: str,
    ) -> None:
        self.db = db
        self.key = key
        self.config = config
        self.bind_host = bind_host
        self.messages_path = messages_path
        self.log: MessageLog | None = None
        self.sessions: dict[int, ChatSession] = {}
        self.on_end: list[EndHook] = []
        self._backend = _DbBackend(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._checkpointer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("chat store update failed: %s", task.exception())

    async def start(self) -> None:
        """Open the message log and reopen the sessions left open by the last run."""
        self.log = await MessageLog.open(self.messages_path)
        self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoints())
        for row in await chatstore.open_sessions(self.db):
            if row.mode != "relay":
                await chatstore.end_session(
                    self.db, row.id, reason="server", now=time.time(), last_active=row.last_active
                )
                continue
            history = self.log.load(row.id)
            members = await chatstore.members(self.db, row.id)
            session = self._make(row, history=history, members=members, reopened=True)
            try:
                await session.listen(self.bind_host)
            except OSError as exc:
                log.error("cannot reopen chat session %d on port %d: %s", row.id, row.port, exc)
                session.end("port unavailable")
                continue
            log.info(
                "reopened chat session %d on port %d (%d messages)", row.id, row.port, len(history)
            )

    async def _checkpoints(self) -> None:
        """Checkpoint the message log's WAL in a worker thread, once a second if written."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CHECKPOINT_EVERY)
            log_ = self.log
            if log_ is not None and log_.unchecked and not self._stop.is_set():
                log_.unchecked = 0
                await asyncio.to_thread(log_.checkpoint)

    async def close(self) -> None:
        """Stop listening; the sessions stay open in the database for the next start."""
        self._stop.set()
        if self._checkpointer is not None:
            await self._checkpointer  # lets a checkpoint in progress finish first
        for s in list(self.sessions.values()):
            s.shutdown()
        self.sessions.clear()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.log is not None:
            self.log.close()
            self.log = None

    def _make(
        self,
        row: chatstore.SessionRow,
        *,
        history: list[chatstore.StoredMessage] | None = None,
        members: dict[str, int] | None = None,
        reopened: bool = False,
    ) -> ChatSession:
        cfg = self.config
        session = ChatSession(
            id=row.id,
            port=row.port,
            owner=row.owner,
            message_id=row.message_id,
            subject=row.subject,
            secret=session_secret(self.key, row.id),
            backend=self._backend,
            max_text=cfg.max_chat_message,
            max_frame=cfg.max_frame,
            max_buffer=cfg.max_write_buffer,
            idle_timeout=cfg.session_idle_timeout,
            conn_timeout=cfg.heartbeat_timeout,
            history=history or (),
            members=members,
            last_active=row.last_active,
            reopened=reopened,
        )
        session.on_end.extend(self.on_end)
        self.sessions[row.id] = session
        return session

    def by_port(self, port: int) -> ChatSession | None:
        for s in self.sessions.values():
            if s.port == port and not s.ended:
                return s
        return None

    def count_for(self, login: str) -> int:
        return sum(1 for s in self.sessions.values() if login in s.members and not s.ended)

    def check_limit(self, login: str) -> None:
        if self.count_for(login) >= self.config.max_sessions_per_user:
            raise ChatError(
                f"{login} already has {self.config.max_sessions_per_user} chats open; "
                "end one and try again",
                code="limit",
            )

    async def open(
        self,
        *,
        port: int,
        lease: int,
        owner: str,
        message_id: str,
        subject: str,
        host: str,
        mode: str = "relay",
        listen: bool = True,
    ) -> ChatSession:
        """Create a session for ``port`` and (relay mode) start its listener."""
        now = time.time()
        sid = await chatstore.create_session(
            self.db,
            port=port,
            lease=lease,
            owner=owner,
            message_id=message_id,
            subject=subject,
            mode=mode,
            host=host,
            now=now,
        )
        row = chatstore.SessionRow(
            sid, port, lease, owner, message_id, subject, mode, host, "open", now, now
        )
        session = self._make(row)
        if listen:
            try:
                await session.listen(self.bind_host)
                if port == 0:  # an ephemeral port: record the one we got
                    await chatstore.set_session_port(self.db, sid, session.port)
            except OSError as exc:
                session.end("port unavailable")
                raise ChatError(
                    f"the chat port {port} cannot be opened on the server ({exc.strerror}); "
                    "try again later",
                    code="internal",
                ) from exc
        return session

    async def open_call(
        self,
        *,
        port: int,
        lease: int,
        caller: str,
        callee: str,
        message_id: str,
        subject: str,
        host: str,
        mode: str = "relay",
    ) -> tuple[ChatSession, int]:
        """A call's session, admitted members and call row (one commit), listening when
        relayed; ``(session, call id)``. Limits are the caller's to check first."""
        now = time.time()
        sid, call_id = await chatstore.create_call_session(
            self.db,
            port=port,
            lease=lease,
            message_id=message_id,
            subject=subject,
            mode=mode,
            host=host,
            caller=caller,
            callee=callee,
            now=now,
        )
        row = chatstore.SessionRow(
            sid, port, lease, callee, message_id, subject, mode, host, "open", now, now
        )
        session = self._make(row, members={caller: 0, callee: 0})
        if mode == "relay":
            try:
                await session.listen(self.bind_host)
            except OSError as exc:
                session.end("port unavailable")
                raise ChatError(
                    f"the chat port {port} cannot be opened on the server ({exc.strerror}); "
                    "try again later",
                    code="internal",
                ) from exc
        return session, call_id

    async def relay(self, session: ChatSession, host: str) -> None:
        """Turn a direct-mode session into a server-hosted one (the probe failed)."""
        await chatstore.set_session_host(self.db, session.id, "relay", host)
        if session.server is None:
            await session.listen(self.bind_host)

    async def admit(self, session: ChatSession, *logins: str) -> str:
        """Add ``logins`` to ``session`` (limits checked); return the first one's token."""
        for login in logins:
            if login not in session.members:
                self.check_limit(login)
        tokens = [session.admit(login) for login in logins]
        await chatstore.add_members(self.db, session.id, logins, time.time())
        return tokens[0]
