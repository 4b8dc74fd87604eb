"""``ChatApi`` over the real chat engine (chmail.client.chat) and the live CH link.

Calls are keyed by the server's call id (as a string) everywhere in the TUI. Engine
events are pumped from the engine's queue into the ``ChatEvents`` the app implements;
each joined session gets its own pump for lines, typing, read marks and its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from chmail import protocol as p
from chmail import protocol_routing as r
from chmail.client.cache import Cache
from chmail.client.cache_models import Message
from chmail.client.chat import (
    AlarmEvent,
    CallEvent,
    ChatEngine,
    RingEvent,
    mail_ref,
    transcript_mail,
)
from chmail.client.chatsession import (
    EndedEvent,
    ErrorEvent,
    Line,
    LinkEvent,
    ReadEvent,
    SessionClient,
    Stored,
    TypingEvent,
)
from chmail.client.chlink import ChLink, LinkState
from chmail.client.operator import OperatorDesk
from chmail.client.tui.api import AlarmItem, ChatEvents, ChatLine, QueueItem, Ring
from chmail.client.tui.widgets.message_list import ch_login
from chmail.errors import AuthError, ChatError, ChmailError

log = logging.getLogger(__name__)

ENDED = ("declined", "missed", "cancelled", "ended")
STATE_WORDS = {
    LinkState.CONNECTED: "online",
    LinkState.CONNECTING: "connecting",
    LinkState.DISCONNECTED: "offline",
    LinkState.CLOSED: "off",
    LinkState.IDLE: "off",
}


class ChatBridge:
    """One account's chat, as the TUI sees it."""

    def __init__(
        self,
        link: ChLink,
        cache: Cache,
        login: str,
        filer: Callable[[str, bytes], Awaitable[str]] | None = None,
    ) -> None:
        self.filer = filer
        self.link = link
        self.engine = ChatEngine(link, login)
        self.cache = cache
        self._login = login
        self.events: ChatEvents | None = None
        self.sessions: dict[str, SessionClient] = {}
        self.outgoing: dict[str, Message] = {}
        self.subjects: dict[str, str] = {}
        self.briefs: dict[int, dict[str, Any]] = {}
        self.rings: dict[str, p.Ring] = {}
        self.ring_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        link.on_push(self._on_extra)
        self.desk = OperatorDesk(link)  # campaign chats: canned replies, tags, dial (S209)
        self.dialled: set[str] = set()  # calls this operator placed with route_dial

    def login(self) -> str:
        return self._login

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ start and events

    async def start(self, events: ChatEvents) -> None:
        self.events = events

        def state(st: LinkState) -> None:
            events.on_link_state(STATE_WORDS.get(st, st.value), "")

        self.link.on_state(state)
        self._spawn(self._pump())
        events.on_link_state("connecting", "")
        try:
            await self.link.start()
        except AuthError as exc:
            events.on_link_state("offline", f"CH server: {exc}")
            return
        except ChmailError as exc:
            # Not reachable now: the link keeps trying in the background (with backoff)
            # and the state callback says "online" once it is up.
            events.on_link_state("offline", f"CH server: {exc} chmail keeps trying.")
            await self.link.start(wait=False)
            return
        events.on_link_state("online", "")
        with contextlib.suppress(ChmailError):
            for alarm in await self.alarms():
                events.on_alarm(alarm)

    def _on_extra(self, msg: p.Message) -> None:
        if isinstance(msg, r.Brief):
            self.briefs[msg.call] = dict(msg.data)
            ring = self.rings.get(str(msg.call))
            if ring is not None and self.events is not None:
                self.events.on_ring(self._ring(ring))

    async def _pump(self) -> None:
        while True:
            ev = await self.engine.events.get()
            try:
                self._event(ev)
            except Exception:
                log.exception("chat event %r", ev)

    def _event(self, ev: RingEvent | CallEvent | AlarmEvent) -> None:
        events = self.events
        assert events is not None
        if isinstance(ev, RingEvent):
            key = str(ev.ring.call)
            self.rings[key] = ev.ring
            self.ring_at.setdefault(key, time.time())
            self.subjects[key] = ev.ring.subject
            events.on_ring(self._ring(ev.ring))
        elif isinstance(ev, CallEvent):
            st, key = ev.state, str(ev.state.call)
            if key not in self.outgoing and st.state in ("ringing", "queued", "accepted"):
                self._follow(key, st)
            mine = key in self.outgoing or key in self.dialled
            if st.state == "accepted" and mine and key not in self.sessions:
                self._spawn(self._join(key, st))
            elif st.state in ENDED or st.state == "alarmed":
                if key in self.rings:
                    self.rings.pop(key)
                    events.on_ring_gone(key, f"{st.peer or 'the caller'} {st.state} the call.")
                elif st.state == "alarmed":
                    events.on_ended(key, f"{st.peer} is offline; an alarm was left for them")
                else:
                    events.on_ended(key, st.message or st.state)
        else:
            for a in ev.alarms:
                events.on_alarm(_alarm(a))

    def _follow(self, key: str, st: p.CallState) -> None:
        """A campaign chat of ours that goes on under another call id: the server queued
        the member and placed the call later, or passed it on to another operator."""
        prev = next(
            (
                k
                for k, msg in reversed(self.outgoing.items())
                if st.message_id and msg.message_id == st.message_id and k not in self.sessions
            ),
            None,
        )
        if prev is None or self.events is None:
            return
        self.outgoing[key] = self.outgoing[prev]
        self.subjects[key] = self.subjects.get(prev, st.subject)
        if st.state == "queued":
            text = st.message or "waiting for an operator"
        elif st.state == "ringing":
            text = f"ringing {st.peer}…"
        else:
            text = "connecting…"
        self.events.on_call_moved(prev, key, text)

    def _ring(self, ring: p.Ring) -> Ring:
        brief = self.briefs.get(ring.call, {})
        context = "  ".join(
            f"{k}: {v}" for k, v in brief.items() if isinstance(v, str | int) and k != "member"
        )
        return Ring(str(ring.call), ring.caller, ring.subject, ring.port, context)

    async def _join(self, key: str, st: p.CallState) -> None:
        assert self.events is not None
        try:
            client = await self.engine.join(st)
        except ChmailError as exc:
            self.events.on_ended(key, f"could not join: {exc}")
            return
        self.sessions[key] = client
        self.subjects.setdefault(key, st.subject)
        self.events.on_chat_open(key, st.peer, st.subject)
        self._spawn(self._session_pump(key, client))

    async def _session_pump(self, key: str, client: SessionClient) -> None:
        events = self.events
        assert events is not None
        for line in list(client.lines):
            events.on_line(_line(key, line))
        while True:
            ev = await client.events.get()
            if isinstance(ev, Line):
                events.on_line(_line(key, ev))
            elif isinstance(ev, Stored):
                for line in client.lines:
                    if line.cid == ev.cid:
                        events.on_line(_line(key, line))
            elif isinstance(ev, TypingEvent):
                if ev.active and ev.login != self._login:
                    events.on_typing(key, ev.login)
            elif isinstance(ev, ReadEvent):
                if ev.login != self._login:
                    events.on_read(key, ev.login, ev.seq)
            elif isinstance(ev, EndedEvent):
                events.on_ended(key, f"{ev.by or 'the other side'} ended the chat ({ev.reason})")
                return
            elif isinstance(ev, LinkEvent):
                events.on_link_state("online" if ev.state == "open" else "connecting", "")
            elif isinstance(ev, ErrorEvent):
                events.on_link_state("online", ev.message)

    # ------------------------------------------------------------------ calls

    async def escalate(self, msg: Message) -> str:
        if not msg.has_ch:
            raise ChatError("this mail has no chat link (no X-CH headers)")
        pairs = [*msg.ch_headers, ("Message-ID", msg.message_id), ("Subject", msg.subject)]
        ref = mail_ref(pairs)
        st = await self.engine.escalate(ref)
        key = str(st.call)
        self.outgoing[key] = msg
        self.subjects[key] = msg.subject
        if st.state == "accepted" and st.token:
            await self._join(key, st)
        elif st.state == "alarmed":
            raise ChatError(
                f"{ch_login(msg)} is offline; an alarm was left for them and they were mailed"
            )
        elif st.state in ENDED:
            raise ChatError(st.message or f"the call was {st.state}")
        return key

    async def accept(self, session: str) -> None:
        self.rings.pop(session, None)
        st = await self.engine.answer(int(session), True)
        if st.state != "accepted":
            raise ChatError(st.message or f"the call is {st.state}")
        client = await self.engine.join(st)
        self.sessions[session] = client
        self._spawn(self._session_pump(session, client))

    async def decline(self, session: str) -> None:
        self.rings.pop(session, None)
        await self.engine.answer(int(session), False)

    def _client(self, session: str) -> SessionClient:
        client = self.sessions.get(session)
        if client is None:
            raise ChatError("this chat is not open any more")
        return client

    async def say(self, session: str, text: str) -> None:
        self._client(session).say(text)

    async def typing(self, session: str) -> None:
        self._client(session).typing(True)

    async def mark_read(self, session: str, seq: int) -> None:
        self._client(session).mark_read(seq)

    async def history(self, session: str) -> Sequence[ChatLine]:
        client = self.sessions.get(session)
        return [_line(session, ln) for ln in client.lines] if client else []

    async def leave(self, session: str) -> None:
        client = self.sessions.pop(session, None)
        if client is not None:
            await client.leave()
        else:
            with contextlib.suppress(ChmailError):
                await self.engine.hangup(int(session))

    async def transcript(self, session: str) -> str:
        """File the chat as a mail into the original mail's thread; where it went."""
        client = self.sessions.get(session)
        if client is None or not client.lines:
            raise ChatError("there is nothing to file: this chat has no messages here")
        st = self.engine.calls.get(int(session))
        mid = st.message_id if st else ""
        mail = transcript_mail(
            client.lines,
            me=self._login,
            subject=self.subjects.get(session, ""),
            message_id=mid,
            members=client.members,
        )
        if self.filer is None:
            raise ChatError("this account cannot file mail")
        return await self.filer(mid, bytes(mail))

    # ------------------------------------------------------------------ alarms, presence, queue

    async def alarms(self) -> list[AlarmItem]:
        return [_alarm(a) for a in await self.engine.alarms()]

    async def call_back(self, alarm: AlarmItem) -> str:
        """Ring the caller back, about their newest mail that carries a chat link."""
        found = [m for m in await self.cache.search("has:chat", 500) if ch_login(m) == alarm.caller]
        if not found:
            raise ChatError(
                f"there is no mail from {alarm.caller} with a chat link to call back on; "
                "answer their mail instead (your reply carries your chat link)"
            )
        with contextlib.suppress(ChmailError):
            await self.engine.alarms(ack=[int(alarm.id)])
        return await self.escalate(found[0])

    async def watch(self, logins: Sequence[str]) -> set[str]:
        online = await self.link.presence(logins)
        return {k for k, v in online.items() if v}

    async def queue(self) -> list[QueueItem]:
        """Campaign chats routed to this operator: rings waiting, with their brief."""
        items = []
        for key, ring in self.rings.items():
            brief = self.briefs.get(ring.call, {})
            items.append(
                QueueItem(
                    key,
                    ring.caller,
                    str(brief.get("campaign", brief.get("campaign_name", "—"))),
                    str(brief.get("product", brief.get("sku", ring.subject))),
                    time.time() - self.ring_at.get(key, time.time()),
                )
            )
        return items

    async def take(self, session: str) -> None:
        await self.accept(session)

    # ------------------------------------------------------------------ operator keys

    def campaign_chat(self, session: str) -> bool:
        """A campaign chat routed to this operator (the shop sent its brief)."""
        return session.lstrip("-").isdigit() and self.desk.brief(int(session)) is not None

    def canned_replies(self, session: str) -> list[tuple[str, str]]:
        return self.desk.replies(int(session))

    async def tag(self, session: str, interests: Sequence[str]) -> None:
        await self.desk.tag(int(session), list(interests))

    def last_campaign(self) -> int | None:
        return self.desk.last_campaign()

    async def dial(self, member: str, campaign: int) -> str:
        """S209: ring ``member`` about ``campaign``; a sentence on what happened. The chat
        opens (``on_chat_open``) when they accept; an offline member gets an alarm."""
        st = await self.desk.dial(member, campaign)
        if st.state == "alarmed":
            return f"{member} is offline; an alarm was left for them and they were mailed."
        if st.state in ENDED:
            raise ChatError(st.message or f"the call was {st.state}")
        key = str(st.call)
        self.dialled.add(key)
        self.subjects[key] = st.subject
        return f"Ringing {member}; the chat opens when they accept."

    async def close(self) -> None:
        for client in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await client.close()
        self.sessions.clear()
        await self.engine.close()
        for t in list(self._tasks):
            t.cancel()
        await self.link.close()


def _line(session: str, ln: Line) -> ChatLine:
    return ChatLine(session, ln.seq, ln.login, ln.text, ln.ts, ln.mine, ln.cid)


def _alarm(a: dict[str, Any]) -> AlarmItem:
    return AlarmItem(
        str(a.get("id", "")),
        str(a.get("caller", "")),
        str(a.get("subject", "")),
        float(a.get("at", 0.0) or 0.0),
        int(a.get("port", 0) or 0),
        "missed chat",
    )
