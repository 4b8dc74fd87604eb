"""Calls: from the chat key on a mail to two clients on one session (S107-S117).

Rules:

* A ``call`` quotes the mail's X-CH headers and Message-ID. The link must be valid
  against table 2 (``chmail.headers.verify``: forged, altered, expired, recycled and
  unknown links ring nobody, each with its own reason) and the caller must be one of
  the recipients the lease recorded (one of the caller's e-mail addresses is among
  them). Ringing yourself, too many rings (per caller and per callee, a minute's
  window) and too many open chats are refused with a sentence that says so.
* When a session on that port is already open and its call was accepted, the caller
  just joins it: that is how a third recipient of the mail joins the chat.
* Callee online (a live control link, S113): the session is opened (relay mode: a
  listener on the mail's port on this host) and the callee is rung (``ring``), again
  every ``ring_interval`` while it stays online and silent (S115), until
  ``ring_timeout``: then the call is missed on both sides and leaves an alarm.
* Callee offline: an alarm is kept and mailed (S117, chmail.chserver.alarms) and the
  caller is told so (state ``alarmed``).
* States, pushed to both sides as ``call_state``: ringing, accepted, declined, missed,
  cancelled (the caller gave up), ended (the session ended), alarmed.
* Direct mode (patent ¶33): when the mail's X-CH-Host is the callee's own advertised
  host, the callee's client is asked to host the session itself (``host_chat``), the
  server checks it can connect there, and falls back to a server-hosted session when
  it cannot (or the client says no, or does not answer in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import aiosqlite

from chmail import headers
from chmail import protocol as p
from chmail.chserver import chatstore
from chmail.chserver.alarms import AlarmService, clean_subject
from chmail.chserver.chathub import SessionHub
from chmail.chserver.direct import place_direct
from chmail.chserver.sessions import ChatSession
from chmail.config import ServerConfig
from chmail.errors import ChatError, HeaderError, LinkInvalid

if TYPE_CHECKING:  # routing (issue 6) hooks in through CallService.router
    from chmail.chserver.routing import Router

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds of the ring rate limits

NOT_RECIPIENT = "you are not one of this mail's recipients, so you cannot ring its sender"


@dataclass(frozen=True)
class Lease:
    """Table 2's row for a port, as calls need it."""

    record: headers.LeaseRecord
    recipients: frozenset[str]  # lowercased e-mail addresses


@dataclass
class ServerSeam:
    """What calls need from the CH server core (wired in chmail.chserver.chatwire)."""

    db: aiosqlite.Connection
    key: bytes
    config: ServerConfig
    public_host: str
    is_online: Callable[[str], bool]
    push: Callable[[str, p.Message], int]  # -> number of live links it reached
    lease: Callable[[int], Awaitable[Lease | None]]
    emails: Callable[[str], Awaitable[list[str]]]
    direct_host: Callable[[str], str]  # the host a login advertised in direct mode, or ""


@dataclass
class ActiveCall:
    id: int
    caller: str
    callee: str
    session: ChatSession
    subject: str
    message_id: str
    state: str = "ringing"
    host: str = ""
    ringer: asyncio.Task[None] | None = None
    placement: asyncio.Future[str] | None = None  # resolves to the host the session is on
    hosting: asyncio.Future[p.Hosting] | None = None
    extra: list[str] = field(default_factory=list)


class RateLimit:
    """At most ``limit`` events per key in any ``WINDOW`` seconds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        q = self._events.setdefault(key, deque())
        while q and q[0] <= now - WINDOW:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(now)
        return True


class CallService:
    def __init__(self, seam: ServerSeam, hub: SessionHub, alarms: AlarmService) -> None:
        self.seam = seam
        self.hub = hub
        self.alarms = alarms
        self.config = seam.config
        self.calls: dict[int, ActiveCall] = {}
        self.by_session: dict[int, ActiveCall] = {}
        self.per_caller = RateLimit(self.config.rings_per_minute_per_caller)
        self.per_callee = RateLimit(self.config.rings_per_minute_per_callee)
        hub.on_end.append(self._session_ended)
        self.router: Router | None = None  # campaign chats -> operators (routing.py)

    async def start(self) -> None:
        """Calls a stopped server left ringing are missed now."""
        for c in await chatstore.stale_ringing_calls(self.seam.db):
            await chatstore.set_call_state(
                self.seam.db, c.id, "missed", now=time.time(), reason="server restarted"
            )

    async def close(self) -> None:
        for call in list(self.calls.values()):
            if call.ringer is not None:
                call.ringer.cancel()

    # ------------------------------------------------------------------ checking the link

    async def check_link(self, caller: str, msg: p.Call) -> tuple[headers.ChatLink, Lease]:
        """The link of ``msg`` if ``caller`` may ring with it, else LinkInvalid/ChatError."""
        try:
            pairs = [
                (headers.H_LOGIN, msg.login),
                (headers.H_PORT, str(msg.port)),
                (headers.H_HOST, msg.host),
                (headers.H_SIG, msg.sig),
            ]
            if msg.context:
                pairs.append((headers.H_CONTEXT, msg.context))
            link = headers.parse(pairs)
            headers.check_message_id(msg.message_id)
        except HeaderError as exc:
            raise LinkInvalid(f"this chat link is not valid: {exc}", code=p.E_INVALID) from exc
        assert link is not None
        lease = await self.seam.lease(link.port)
        reason = headers.verify(
            link,
            message_id=msg.message_id,
            key=self.seam.key,
            record=lease.record if lease else None,
            now=time.time(),
        )
        if reason is not None:
            raise LinkInvalid(headers.REASONS[reason], code=reason)
        assert lease is not None
        if caller == lease.record.login:
            raise ChatError("this is your own mail; there is nobody to ring", code=p.E_INVALID)
        mine = {e.lower() for e in await self.seam.emails(caller)}
        if not mine & lease.recipients:
            raise LinkInvalid(NOT_RECIPIENT, code=p.E_NOT_RECIPIENT)
        return link, lease

    # ------------------------------------------------------------------ requests

    async def call(self, caller: str, msg: p.Call) -> p.CallState:
        link, lease = await self.check_link(caller, msg)
        callee = lease.record.login
        if self.router is not None:  # a campaign mail: routing.py rings an operator
            routed = await self.router.route(caller, msg, callee)
            if isinstance(routed, p.CallState):
                return routed
            callee = routed
        if callee == caller:
            raise ChatError("this is your own mail; there is nobody to ring", code=p.E_INVALID)
        subject = clean_subject(msg.subject)
        existing = self.hub.by_port(link.port)
        if existing is not None:
            active = self.by_session.get(existing.id)
            # accepted, or reopened after a restart (no call in memory): join it
            if active is None or active.state == "accepted":
                token = await self.hub.admit(existing, caller)
                return p.CallState(
                    id=msg.id,
                    call=active.id if active else 0,
                    state="accepted",
                    peer=callee,
                    subject=existing.subject,
                    message_id=existing.message_id,
                    message=f"joining the chat with {callee}",
                    host=active.host if active else self.seam.public_host,
                    port=existing.port,
                    session=existing.id,
                    token=token,
                )
            raise ChatError(
                f"somebody is already ringing {callee} about this mail; try again in a minute",
                code=p.E_RATE_LIMITED,
            )
        now = time.time()
        if not self.per_caller.allow(caller, now):
            raise ChatError(
                "you have rung too often; wait a minute and try again", code=p.E_RATE_LIMITED
            )
        if not self.per_callee.allow(callee, now):
            raise ChatError(
                f"{callee} is being rung too often; wait a minute and try again",
                code=p.E_RATE_LIMITED,
            )
        db = self.seam.db
        if not self.seam.is_online(callee):
            call_id = await chatstore.create_call(
                db,
                caller=caller,
                callee=callee,
                port=link.port,
                lease=link.lease,
                message_id=msg.message_id,
                subject=subject,
                state="alarmed",
                now=now,
            )
            await self.alarms.raise_alarm(
                login=callee,
                caller=caller,
                call_id=call_id,
                subject=subject,
                message_id=msg.message_id,
                port=link.port,
                mail=True,
            )
            return p.CallState(
                id=msg.id,
                call=call_id,
                state="alarmed",
                peer=callee,
                subject=subject,
                message_id=msg.message_id,
                message=f"{callee} is offline; they will be alarmed",
            )
        self.hub.check_limit(caller)
        self.hub.check_limit(callee)
        direct = self.seam.direct_host(callee)
        direct = direct if direct and link.host.lower() == direct.lower() else ""
        session, call_id = await self.hub.open_call(
            port=link.port,
            lease=link.lease,
            caller=caller,
            callee=callee,
            message_id=msg.message_id,
            subject=subject,
            host=direct or self.seam.public_host,
            mode="direct" if direct else "relay",
        )
        call = ActiveCall(
            call_id, caller, callee, session, subject, msg.message_id, host=self.seam.public_host
        )
        self.calls[call_id] = call
        self.by_session[session.id] = call
        loop = asyncio.get_running_loop()
        call.placement = loop.create_future()
        if direct:
            self.hub.spawn(place_direct(self, call, direct))
        else:
            call.placement.set_result(self.seam.public_host)
        call.ringer = loop.create_task(self._ring(call))
        return p.CallState(
            id=msg.id,
            call=call_id,
            state="ringing",
            peer=callee,
            subject=subject,
            message_id=msg.message_id,
            message=f"ringing {callee}…",
            port=link.port,
            session=session.id,
        )

    async def answer(self, login: str, msg: p.Answer) -> p.CallState:
        call = self.calls.get(msg.call)
        if call is None or call.callee != login:
            raise ChatError("there is no such call ringing for you", code=p.E_NOT_FOUND)
        if call.state != "ringing":
            raise ChatError(f"that call is already {call.state}", code=p.E_INVALID)
        if not msg.accept:
            await self._finish(call, "declined", f"{login} declined the chat")
            return self._state(call, "declined", peer=call.caller, id=msg.id)
        call.state = "accepted"
        if call.ringer is not None:
            call.ringer.cancel()
        if self.router is not None:
            self.router.on_state(call)
        assert call.placement is not None
        call.host = await call.placement
        await chatstore.set_call_state(self.seam.db, call.id, "accepted", now=time.time())
        s = call.session
        self.seam.push(
            call.caller, self._state(call, "accepted", peer=login, token=s.admit(call.caller))
        )
        self.seam.push(call.callee, self._state(call, "accepted", peer=call.caller))
        return self._state(call, "accepted", peer=call.caller, token=s.admit(login), id=msg.id)

    async def hangup(self, login: str, msg: p.Hangup) -> p.CallState:
        if self.router is not None and msg.call < 0:  # leaving an operator queue
            left = self.router.cancel(login, msg.call)
            if left is not None:
                return replace(left, id=msg.id)
        call = self.calls.get(msg.call)
        if call is None or login not in (call.caller, call.callee):
            raise ChatError("there is no such call of yours", code=p.E_NOT_FOUND)
        peer = call.callee if login == call.caller else call.caller
        if call.state == "ringing":
            await self._finish(call, "cancelled", f"{login} hung up")
            return self._state(call, "cancelled", peer=peer, id=msg.id)
        call.session.end("ended", by=login)
        return self._state(call, "ended", peer=peer, id=msg.id)

    def hosting(self, login: str, msg: p.Hosting) -> p.Ok:
        call = self.calls.get(msg.call)
        if call is None or call.callee != login or call.hosting is None:
            raise ChatError("no chat was asked to be hosted here", code=p.E_NOT_FOUND)
        if not call.hosting.done():
            call.hosting.set_result(msg)
        return p.Ok(id=msg.id)

    # ------------------------------------------------------------------ ringing

    async def _ring(self, call: ActiveCall) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.ring_timeout
        n = 0
        with contextlib.suppress(asyncio.CancelledError):
            while call.state == "ringing":
                left = deadline - time.monotonic()
                if left <= 0:
                    await self._finish(call, "missed", f"{call.callee} did not answer")
                    await self.alarms.raise_alarm(
                        login=call.callee,
                        caller=call.caller,
                        call_id=call.id,
                        subject=call.subject,
                        message_id=call.message_id,
                        port=call.session.port,
                        mail=False,
                    )
                    return
                n += 1
                ring = p.Ring(
                    call=call.id,
                    caller=call.caller,
                    subject=call.subject,
                    message_id=call.message_id,
                    port=call.session.port,
                    n=n,
                    timeout=left,
                )
                if self.seam.push(call.callee, ring) == 0:  # S113: the computer went off
                    await self._finish(
                        call, "alarmed", f"{call.callee} went offline; they will be alarmed"
                    )
                    await self.alarms.raise_alarm(
                        login=call.callee,
                        caller=call.caller,
                        call_id=call.id,
                        subject=call.subject,
                        message_id=call.message_id,
                        port=call.session.port,
                        mail=True,
                    )
                    return
                await asyncio.sleep(min(cfg.ring_interval, left))  # S115: the ring cadence

    async def _finish(self, call: ActiveCall, state: str, message: str) -> None:
        """A ringing call ends without a chat: tell both sides, close the session."""
        call.state = state
        if call.ringer is not None and call.ringer is not asyncio.current_task():
            call.ringer.cancel()
        await chatstore.set_call_state(
            self.seam.db, call.id, state, now=time.time(), reason=message
        )
        self.seam.push(call.caller, self._state(call, state, peer=call.callee, message=message))
        self.seam.push(call.callee, self._state(call, state, peer=call.caller, message=message))
        self._forget(call)
        call.session.end(state)

    def _forget(self, call: ActiveCall) -> None:
        self.calls.pop(call.id, None)
        self.by_session.pop(call.session.id, None)
        if self.router is not None:
            self.router.on_state(call)
        if call.hosting is not None and not call.hosting.done():
            call.hosting.cancel()

    def _session_ended(self, session: ChatSession, reason: str, by: str) -> None:
        call = self.by_session.get(session.id)
        if call is None or call.state != "accepted":
            return
        call.state = "ended"
        self._forget(call)
        msg = f"{by} ended the chat" if by else f"the chat ended ({reason})"
        self.hub.spawn(
            chatstore.set_call_state(self.seam.db, call.id, "ended", now=time.time(), reason=msg)
        )
        for login in {call.caller, call.callee, *session.members}:
            self.seam.push(login, self._state(call, "ended", peer="", message=msg))

    def _state(
        self,
        call: ActiveCall,
        state: str,
        *,
        peer: str,
        token: str = "",
        message: str = "",
        id: int | None = None,
    ) -> p.CallState:
        s = call.session
        joinable = state == "accepted"
        return p.CallState(
            id=id,
            call=call.id,
            state=state,
            peer=peer,
            subject=call.subject,
            message_id=call.message_id,
            message=message,
            host=call.host if joinable else "",
            port=s.port if joinable else 0,
            session=s.id,
            token=token,
        )
