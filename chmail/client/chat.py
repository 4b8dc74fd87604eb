"""The client's chat engine: from a mail to a live chat, over the CH link (S107-S117).

* ``escalate(mail)`` reads the mail's X-CH headers (``chmail.headers.parse``), its
  Message-ID and subject, and sends ``call``; the server answers ``call_state``
  (ringing, alarmed, or accepted when a chat on that mail is already going on).
* Pushes from the server become :attr:`ChatEngine.events`: a ``ring`` (somebody calls
  about one of your mails), a ``call_state`` (a call changed), an ``alarm_list``
  (missed calls, right after login and when one is left while you are online).
* ``answer(call, accept)`` takes or declines a ring; ``join(state)`` opens the
  session of an accepted call (a :class:`~chmail.client.chatsession.SessionClient`
  that reconnects by itself).
* Direct mode (``[accounts.ch] direct``): when the server asks (``host_chat``) this
  client hosts the chat session on the mail's port itself, with the same session code
  as the server, and answers ``hosting``; the server checks it can reach it and falls
  back to hosting it when it cannot.
* ``transcript_mail`` turns a finished chat into a mail in the original mail's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import errno
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from chmail import headers
from chmail import protocol as p
from chmail.chserver.sessions import ChatSession, MemoryBackend
from chmail.client.chatsession import Line, SessionClient
from chmail.config import AccountConfig
from chmail.errors import ChatError, ChmailError, HeaderError

log = logging.getLogger(__name__)


class Link(Protocol):
    """What the engine needs of the live link to the CH server (chmail.client.chlink)."""

    async def request(self, msg: p.Message) -> p.Message: ...

    def on_push(self, callback: Callable[[p.Message], Any]) -> Callable[[], None]: ...


@dataclass(frozen=True)
class MailRef:
    """What escalating needs from a mail."""

    link: headers.ChatLink
    message_id: str
    subject: str
    references: tuple[str, ...] = ()


def _text(value: str | None) -> str:
    if not value:
        return ""
    try:
        return str(make_header(decode_header(value)))
    except (HeaderError, ValueError, LookupError):
        return value


def mail_ref(source: bytes | Message | Iterable[tuple[str, str]]) -> MailRef:
    """Read the chat link, Message-ID, subject and references of a mail.

    ``source`` is the raw mail, a parsed message, or its ``(name, raw value)`` headers.
    Raises ChatError with a sentence when the mail has no (valid) chat link.
    """
    if isinstance(source, bytes):
        source = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(source)
    pairs = list(source.items()) if isinstance(source, Message) else list(source)
    try:
        link = headers.parse(pairs)
    except HeaderError as exc:
        raise ChatError(f"this mail's chat link is not usable: {exc}") from exc
    if link is None:
        raise ChatError(
            "this mail has no chat link (no X-CH headers): its sender does not use chmail, "
            "so you can only answer by mail"
        )
    found = {k.lower(): v for k, v in pairs}
    message_id = found.get("message-id", "").strip()
    try:
        headers.check_message_id(message_id)
    except HeaderError as exc:
        raise ChatError(f"this mail has no usable Message-ID: {exc}") from exc
    refs = tuple(found.get("references", "").split())
    return MailRef(link, message_id, _text(found.get("subject")), refs)


@dataclass(frozen=True)
class RingEvent:
    ring: p.Ring


@dataclass(frozen=True)
class CallEvent:
    state: p.CallState


@dataclass(frozen=True)
class AlarmEvent:
    alarms: list[dict[str, object]]


EngineEvent = RingEvent | CallEvent | AlarmEvent


class ChatEngine:
    """One account's calls, rings, alarms and chat sessions."""

    def __init__(
        self,
        link: Link,
        login: str,
        *,
        direct_host: str = "",
        direct_bind: str = "",
        heartbeat: float = 5.0,
    ) -> None:
        self.link = link
        self.login = login
        self.direct_host = direct_host
        self.direct_bind = direct_bind
        self.heartbeat = heartbeat
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.calls: dict[int, p.CallState] = {}
        self.rings: dict[int, p.Ring] = {}
        self.hosted: dict[int, ChatSession] = {}  # direct mode: call id -> session
        self.joined: dict[int, SessionClient] = {}  # call id -> our link to its session
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[p.Message], None]] = {
            "ring": self._on_ring,
            "call_state": self._on_state,
            "alarm_list": self._on_alarms,
            "host_chat": self._on_host_chat,
        }
        self._unsubscribe = link.on_push(self._on_push)

    def _on_push(self, msg: p.Message) -> None:
        handler = self._handlers.get(msg.t)
        if handler is not None:
            handler(msg)

    # ------------------------------------------------------------------ requests

    async def escalate(self, mail: MailRef | bytes | Message) -> p.CallState:
        """S107: ring the sender of ``mail``. Raises ChatError/ServerError with the reason."""
        ref = mail if isinstance(mail, MailRef) else mail_ref(mail)
        link = ref.link
        reply = await self.link.request(
            p.Call(
                message_id=ref.message_id,
                login=link.login,
                port=link.port,
                host=link.host,
                sig=link.sig,
                context=link.context,
                subject=ref.subject,
            )
        )
        if not isinstance(reply, p.CallState):
            raise ChatError(f"the CH server answered {reply.t!r} to a call")
        await self._note(reply)
        return reply

    async def answer(self, call: int, accept: bool = True) -> p.CallState:
        reply = await self.link.request(p.Answer(call=call, accept=accept))
        if not isinstance(reply, p.CallState):
            raise ChatError(f"the CH server answered {reply.t!r} to an answer")
        self.rings.pop(call, None)
        await self._note(reply)
        return reply

    async def hangup(self, call: int) -> p.CallState:
        reply = await self.link.request(p.Hangup(call=call))
        if not isinstance(reply, p.CallState):
            raise ChatError(f"the CH server answered {reply.t!r} to a hangup")
        await self._note(reply)
        return reply

    async def alarms(
        self, *, ack: Sequence[int] = (), include_seen: bool = False
    ) -> list[dict[str, object]]:
        reply = await self.link.request(p.Alarms(ack=list(ack), all=include_seen))
        if not isinstance(reply, p.AlarmList):
            raise ChatError(f"the CH server answered {reply.t!r} to alarms")
        return list(reply.alarms)

    async def wait_state(
        self,
        call: int,
        states: Iterable[str] = ("accepted", "declined", "missed", "cancelled", "ended", "alarmed"),
    ) -> p.CallState:
        """Wait until call ``call`` is in one of ``states``; return that state."""
        wanted = set(states)
        async with self._changed:
            while True:
                st = self.calls.get(call)
                if st is not None and st.state in wanted:
                    return st
                await self._changed.wait()

    async def next_ring(self) -> p.Ring:
        """The next ring that arrives (or one already ringing)."""
        async with self._changed:
            while not self.rings:
                await self._changed.wait()
            return next(iter(self.rings.values()))

    async def join(self, state: p.CallState) -> SessionClient:
        """Open the session of an accepted call."""
        if state.state != "accepted" or not state.token:
            raise ChatError(f"this call is {state.state}; there is no chat to join")
        client = self.joined.get(state.call)
        if client is not None and client.ended is None and state.call:
            return client
        client = SessionClient(
            state.host,
            state.port,
            state.session,
            self.login,
            state.token,
            heartbeat=self.heartbeat,
        )
        await client.start()
        if state.call:
            self.joined[state.call] = client
        return client

    async def close(self) -> None:
        self._unsubscribe()
        for s in list(self.hosted.values()):
            s.end("ended", by=self.login)
            if s.server is not None:
                await s.server.wait_closed()
        self.hosted.clear()
        for c in list(self.joined.values()):
            await c.close()
        self.joined.clear()
        for t in list(self._tasks):
            t.cancel()

    # ------------------------------------------------------------------ pushes

    async def _note(self, st: p.CallState) -> None:
        async with self._changed:
            old = self.calls.get(st.call)
            if old is None or old.state != st.state or st.token:
                self.calls[st.call] = st if st.token or old is None else _merge(old, st)
            if st.state != "ringing":
                self.rings.pop(st.call, None)
            self._changed.notify_all()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_ring(self, msg: p.Message) -> None:
        assert isinstance(msg, p.Ring)
        first = msg.call not in self.rings
        self.rings[msg.call] = msg
        if first:
            self.events.put_nowait(RingEvent(msg))
        self._spawn(self._poke())

    async def _poke(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _on_state(self, msg: p.Message) -> None:
        assert isinstance(msg, p.CallState)
        self.events.put_nowait(CallEvent(msg))
        if msg.state in ("declined", "missed", "cancelled", "ended", "alarmed"):
            hosted = self.hosted.pop(msg.call, None)
            if hosted is not None:
                hosted.end(msg.state)
            joined = self.joined.pop(msg.call, None)
            if joined is not None:
                # the CH server says the chat is over: its session tells a connected
                # client itself; one that is reconnecting must stop trying its port
                joined.over(msg.state)
        self._spawn(self._note(msg))

    def _on_alarms(self, msg: p.Message) -> None:
        assert isinstance(msg, p.AlarmList)
        self.events.put_nowait(AlarmEvent(list(msg.alarms)))

    def _on_host_chat(self, msg: p.Message) -> None:
        assert isinstance(msg, p.HostChat)
        if msg.stop:  # the server relays this chat after all
            s = self.hosted.pop(msg.call, None)
            if s is not None:
                s.end("relayed")
            return
        self._spawn(self._host(msg))

    async def _listen(self, session: ChatSession) -> None:
        """Listen on ``direct_bind``, else on the advertised host's address when it is one
        of this machine's, else (behind NAT, say) on every interface."""
        if self.direct_bind:
            await session.listen(self.direct_bind)
            return
        try:
            await session.listen(self.direct_host)
        except OSError as exc:
            if not isinstance(exc, socket.gaierror) and exc.errno != errno.EADDRNOTAVAIL:
                raise
            await session.listen("")

    def _hosted_ended(self, call: int, _session: ChatSession, reason: str, _by: str) -> None:
        """A chat we host ended here: tell the CH server (it does not see direct chats)."""
        self.hosted.pop(call, None)
        if reason in ("ended", "idle"):
            self._spawn(self._quiet(p.Hangup(call=call)))

    async def _quiet(self, msg: p.Message) -> None:
        with contextlib.suppress(ChmailError):
            await self.link.request(msg)

    async def _host(self, msg: p.HostChat) -> None:
        """Direct mode: host the session on our own port and tell the server."""
        ok, why = False, ""
        if not self.direct_host:
            why = "direct mode is off on this client"
        else:
            try:
                session = ChatSession(
                    id=msg.session,
                    port=msg.port,
                    owner=self.login,
                    message_id=msg.message_id,
                    subject=msg.subject,
                    secret=bytes.fromhex(msg.secret),
                    backend=MemoryBackend(),
                )
                await self._listen(session)
                self.hosted[msg.call] = session
                session.on_end.append(functools.partial(self._hosted_ended, msg.call))
                ok = True
            except (OSError, ValueError) as exc:
                why = f"cannot listen on port {msg.port}: {exc}"
                log.warning("direct mode: %s", why)
        with contextlib.suppress(ChmailError):
            await self.link.request(
                p.Hosting(call=msg.call, ok=ok, host=self.direct_host, port=msg.port, message=why)
            )


def _merge(old: p.CallState, new: p.CallState) -> p.CallState:
    """A pushed state without join details keeps those of the reply we already had."""
    if old.token and not new.token and new.state == "accepted":
        return old
    return new


@contextlib.asynccontextmanager
async def open_engine(account: AccountConfig) -> AsyncIterator[ChatEngine]:
    """Log in to the account's CH server and run a chat engine on that link."""
    from chmail.client.chlink import ChLink

    link = await ChLink.from_account(account)
    ch = account.ch
    # the engine listens before the link logs in: alarms are pushed right after auth
    engine = ChatEngine(link, ch.login, direct_host=ch.direct_host if ch.direct else "")
    try:
        await link.start()
    except BaseException:
        await engine.close()
        await link.close()
        raise
    try:
        yield engine
    finally:
        await engine.close()
        await link.close()


# ----------------------------------------------------------------------------- transcript


def transcript_text(lines: Iterable[Line], *, tz: str = "UTC") -> str:
    out = []
    for ln in sorted(lines, key=lambda x: (x.seq == 0, x.seq, x.ts)):
        when = time.strftime("%H:%M", time.gmtime(ln.ts))
        out.append(f"[{when}] {ln.login}: {ln.text}")
    return "\n".join(out) + "\n"


def transcript_mail(
    lines: Iterable[Line],
    *,
    me: str,
    subject: str,
    message_id: str,
    references: Sequence[str] = (),
    members: Sequence[str] = (),
    domain: str = "localhost",
    now: float | None = None,
) -> EmailMessage:
    """The transcript of a chat as a mail in the original mail's thread (to and from ``me``)."""
    msg = EmailMessage()
    msg["From"] = me
    msg["To"] = me
    msg["Subject"] = f"Chat: {subject}" if subject else "Chat transcript"
    msg["Date"] = formatdate(now if now is not None else time.time(), localtime=False)
    msg["Message-ID"] = make_msgid("chat", domain=domain)
    msg["In-Reply-To"] = message_id
    msg["References"] = " ".join([*[r for r in references if r != message_id], message_id])
    msg["X-Chmail-Transcript"] = "yes"
    who = ", ".join(members) if members else ""
    head = f"Chat about {message_id}" + (f" with {who}" if who else "") + " (times in UTC)\n\n"
    msg.set_content(head + transcript_text(lines))
    return msg
