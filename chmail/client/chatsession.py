"""The client side of one chat session: join, send, receive, and come back by itself.

Rules:

* Every message this side sends gets a client id (``cid``) and is shown at once as
  pending; it is resent with the same ``cid`` after every reconnect until the session
  answers ``said``, so it is stored once whatever happens to the link.
* ``last_seq`` is the highest sequence number seen. The session pushes only stored
  messages, in order, so reconnecting with ``join(last_seq)`` gets exactly what was
  missed. A message is shown once: ``(login, cid)`` already shown is never shown again.
* When the link drops (server restart, network), the client reconnects with a growing
  pause (up to ``max_backoff``) until it is back, closed, or the session has ended.
* Heartbeat: a ``ping`` every ``heartbeat`` seconds; a session silent for
  ``3 * heartbeat`` is taken as gone and reconnected.

What happens is told through :attr:`SessionClient.events` (an asyncio.Queue of the
event dataclasses below), so a TUI or the line-mode CLI can show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from chmail import protocol as p
from chmail.errors import ChatError, ChmailError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Line:
    """A chat message. ``seq`` 0 means not yet stored (pending)."""

    seq: int
    login: str
    cid: str
    text: str
    ts: float
    mine: bool


@dataclass(frozen=True)
class Stored:
    """A message of ours was stored under ``seq``."""

    cid: str
    seq: int


@dataclass(frozen=True)
class TypingEvent:
    login: str
    active: bool


@dataclass(frozen=True)
class ReadEvent:
    login: str
    seq: int


@dataclass(frozen=True)
class MemberEvent:
    login: str
    state: str  # joined, away, left


@dataclass(frozen=True)
class LinkEvent:
    state: str  # "open", "reconnecting"
    detail: str = ""


@dataclass(frozen=True)
class EndedEvent:
    reason: str
    by: str


@dataclass(frozen=True)
class ErrorEvent:
    message: str
    cid: str = ""


Event = Line | Stored | TypingEvent | ReadEvent | MemberEvent | LinkEvent | EndedEvent | ErrorEvent


@dataclass
class SessionClient:
    """One participant's link to a chat session."""

    host: str
    port: int
    session: int
    login: str
    token: str = field(repr=False)
    max_frame: int = p.DEFAULT_MAX_FRAME
    heartbeat: float = 5.0
    max_backoff: float = 1.0
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    lines: list[Line] = field(default_factory=list)
    last_seq: int = 0
    members: list[str] = field(default_factory=list)
    subject: str = ""
    ended: EndedEvent | None = None

    def __post_init__(self) -> None:
        self._pending: dict[str, str] = {}  # cid -> text, in send order
        self._shown: set[tuple[str, str]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._conn: p.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._closing = False
        self._ids = 0
        self._say_ids: dict[int, str] = {}  # request id -> cid, to match errors
        self.reconnects = 0
        self.max_text = 0
        self._tick = asyncio.Event()
        self._over = ""  # set when the CH server said the chat ended
        self._last_tx = time.monotonic()

    # ------------------------------------------------------------------ public

    async def start(self) -> None:
        """Connect and join; raises ChatError if the session refuses us."""
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_open(self) -> None:
        await self._joined.wait()

    def say(self, text: str) -> str:
        """Queue ``text``; it is shown now as pending and sent until stored. Returns its cid."""
        if self.ended is not None:
            raise ChatError("this chat has ended")
        if self.max_text and len(text.encode()) > self.max_text:
            raise ChatError(
                f"messages are limited to {self.max_text} bytes; split it into several",
                code=p.E_LIMIT,
            )
        cid = secrets.token_urlsafe(9)
        self._pending[cid] = text
        self._shown.add((self.login, cid))
        line = Line(0, self.login, cid, text, time.time(), True)
        self.lines.append(line)
        self.events.put_nowait(line)
        self._send(self._say_msg(cid, text))
        return cid

    def _say_msg(self, cid: str, text: str) -> p.Say:
        rid = self._next_id()
        self._say_ids[rid] = cid
        return p.Say(id=rid, cid=cid, text=text)

    def typing(self, active: bool = True) -> None:
        self._send(p.Typing(active=active))

    def mark_read(self, seq: int | None = None) -> None:
        self._send(p.Read(seq=self.last_seq if seq is None else seq))

    async def changed(self) -> None:
        """Wait for the next change: a message stored or the chat ended."""
        await self._tick.wait()

    def _changed(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    async def leave(self) -> None:
        self._send(p.Leave(id=self._next_id()))
        await self.close()

    async def end(self) -> None:
        self._send(p.End(id=self._next_id()))
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            w, self._writer = self._writer, None
            with contextlib.suppress(Exception):
                await w.drain()
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ link

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _send(self, msg: p.Message) -> None:
        if self._writer is None or self._conn is None or not self._joined.is_set():
            return  # said-messages are resent on join; typing/read are not worth keeping
        self._write(self._conn.send(msg))

    def _write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        self._last_tx = time.monotonic()

    async def _connect(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = p.Connection(p.Role.CLIENT, max_frame=self.max_frame)
        try:
            writer.write(conn.send(p.Hello(agent="chmail")))
            writer.write(
                conn.send(
                    p.Join(
                        id=self._next_id(),
                        session=self.session,
                        login=self.login,
                        token=self.token,
                        last_seq=self.last_seq,
                        batch=True,
                    )
                )
            )
            backlog: list[p.Message] = []
            while True:
                data = await asyncio.wait_for(reader.read(65536), self.heartbeat * 3)
                if not data:
                    raise ConnectionResetError("the chat session closed the connection")
                conn.receive_data(data)
                done = False
                for msg in conn.events():
                    if done:
                        backlog.append(msg)
                    elif isinstance(msg, p.Joined):
                        self.members = list(msg.members)
                        self.subject = msg.subject
                        self.max_text = msg.max_text
                        done = True
                    elif isinstance(msg, p.Error):
                        raise ChatError(f"the chat refused us: {msg.message}", code=msg.code)
                    elif isinstance(msg, p.Ended):
                        self._on_ended(msg)
                        raise ChatError("this chat has ended", code="ended")
                if done:
                    break
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer, self._conn = reader, writer, conn
        self._joined.set()
        for msg in backlog:
            self._handle(msg)
        for cid, text in list(self._pending.items()):  # resend what was not stored
            writer.write(conn.send(self._say_msg(cid, text)))

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._pump()
            except (OSError, TimeoutError, ChmailError) as exc:
                log.info("chat link lost: %s", exc)
            if self._closing or self.ended is not None:
                return
            if self._over:  # lost the link of a chat already over: do not come back
                self._on_ended(p.Ended(reason=self._over))
                return
            self._joined.clear()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self.events.put_nowait(LinkEvent("reconnecting"))
            await self._reconnect()

    async def _pump(self) -> None:
        reader, conn = self._reader, self._conn
        assert conn is not None
        last_rx = time.monotonic()
        while not self._closing:
            try:
                data = await asyncio.wait_for(reader.read(65536), self.heartbeat)
            except TimeoutError:
                data = None
            now = time.monotonic()
            if data == b"":
                raise ConnectionResetError("the chat session closed the connection")
            if data:
                last_rx = now
                conn.receive_data(data)
                for msg in conn.events():
                    self._handle(msg)
                if self.ended is not None:
                    return
            elif now - last_rx >= self.heartbeat * 3:
                raise TimeoutError("the chat session went silent")
            if now - self._last_tx >= self.heartbeat and self._writer is not None:
                self._write(conn.send(p.Ping(n=1)))  # we are alive, even when only reading

    async def _reconnect(self) -> None:
        delay = 0.02
        while not self._closing and self.ended is None:
            try:
                await self._connect()
            except ChatError as exc:
                if exc.code in ("ended", p.E_AUTH_FAILED):
                    if self.ended is None:
                        self._on_ended(p.Ended(reason="ended"))
                    return
            except (OSError, TimeoutError, ChmailError) as exc:
                log.debug("reconnect to chat failed: %s", exc)
            else:
                self.reconnects += 1
                self.events.put_nowait(LinkEvent("open"))
                return
            if self._over:
                self._on_ended(p.Ended(reason=self._over))
                return
            await asyncio.sleep(delay)  # back-off between attempts (not a synchronisation)
            delay = min(delay * 2, self.max_backoff)

    # ------------------------------------------------------------------ pushes

    def _handle(self, msg: p.Message) -> None:
        if isinstance(msg, p.Chats):
            for i, (cid, text) in enumerate(zip(msg.cids, msg.texts, strict=False)):
                self._chat(msg.seq + i, msg.login, cid, text, msg.ts)
        elif isinstance(msg, p.Chat):
            self._chat(msg.seq, msg.login, msg.cid, msg.text, msg.ts)
        elif isinstance(msg, p.SaidMany):
            for rid, seq, cid in zip(msg.ids, msg.seqs, msg.cids, strict=False):
                self._acked(rid, seq, cid)
        elif isinstance(msg, p.Said):
            self._acked(msg.id, msg.seq, msg.cid)
        elif isinstance(msg, p.Typing):
            self.events.put_nowait(TypingEvent(msg.login, msg.active))
        elif isinstance(msg, p.Read):
            self.events.put_nowait(ReadEvent(msg.login, msg.seq))
        elif isinstance(msg, p.Member):
            if msg.state == "joined" and msg.login not in self.members:
                self.members.append(msg.login)
            elif msg.state == "left" and msg.login in self.members:
                self.members.remove(msg.login)
            self.events.put_nowait(MemberEvent(msg.login, msg.state))
        elif isinstance(msg, p.Ended):
            self._on_ended(msg)
        elif isinstance(msg, p.Error):
            cid = self._say_ids.pop(msg.id, "") if msg.id is not None else ""
            if cid and msg.code != p.E_INTERNAL:  # refused for good: do not resend it
                self._pending.pop(cid, None)
                self._changed()
            self.events.put_nowait(ErrorEvent(msg.message, cid))

    def _chat(self, seq: int, login: str, cid: str, text: str, ts: float) -> None:
        self.last_seq = max(self.last_seq, seq)
        if login == self.login and cid in self._pending:
            self._stored(cid, seq)
        elif (login, cid) not in self._shown:
            self._shown.add((login, cid))
            line = Line(seq, login, cid, text, ts, login == self.login)
            self.lines.append(line)
            self.events.put_nowait(line)

    def _acked(self, rid: int, seq: int, cid: str) -> None:
        self._say_ids.pop(rid, None)
        self.last_seq = max(self.last_seq, seq)
        if cid in self._pending:
            self._stored(cid, seq)

    def _stored(self, cid: str, seq: int) -> None:
        text = self._pending.pop(cid)
        for i, line in enumerate(self.lines):
            if line.cid == cid and line.mine:
                self.lines[i] = Line(seq, line.login, cid, text, line.ts, True)
                break
        self.events.put_nowait(Stored(cid, seq))
        self._changed()

    def over(self, reason: str) -> None:
        """The CH server says the chat is over: do not reconnect to it any more."""
        self._over = reason
        if self.ended is None and not self._joined.is_set():
            self._on_ended(p.Ended(reason=reason))

    def _on_ended(self, msg: p.Ended) -> None:
        self.ended = EndedEvent(msg.reason, msg.by)
        self.events.put_nowait(self.ended)
        self._changed()
