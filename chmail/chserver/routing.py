"""Operator routing for campaign chats (mall publicity, patent S207-S219).

Rules:

* The shop (logged in with the CH login that owns its campaign mails) registers each
  campaign's operator pool with ``route_pool``; pools live in memory and the shop sends
  them again on every (re)connect, so there is no second copy to drift.
* A ``call`` on a mail whose lease belongs to a pool owner and whose X-CH-Context names
  a campaign with a pool is routed (S209-S213): among the pool's operators that are
  online and below their capacity, the one with the fewest calls in progress (ties: the
  one that was given a call longest ago) is rung instead of the owner.
* All online operators at capacity: the member waits in the campaign's queue, first
  come first served, and is told the position (``call_state`` ``queued``), again each
  time the queue moves; a hang-up leaves the queue. When an operator's call ends, the
  head of the queue is routed.
* A routed call the operator declines, lets ring out, or loses by going offline is
  passed on, never left hanging: the member is rung by the next operator of the pool
  who has not turned this chat down yet (least busy first), or waits at the head of the
  queue when those are all busy, or, when they are all offline, one of them gets the
  alarm (as above). Only when every operator of the pool has turned it down does the
  chat end, and the member is told so. The shop sees ``passed`` (not ``ended``) for the
  turned-down call, so the board still counts the member as waiting.
* No operator of the pool online: the call goes to the operator given one longest ago;
  that operator is offline, so the call service leaves the alarm (S117) and a member's
  request is never lost.
* An operator may call a member of a campaign (``route_dial``, S209); an offline member
  gets an alarm, shown at the next login and mailed (S215-S219).
* Every step is pushed to the pool's owner as ``route_event`` so the shop can count
  chats asked / answered / waiting and time to answer (the live board); ``route_state``
  tells the owner which of its chats are going on now (what a shop that restarted, or
  lost its link, missed).
* ``brief`` from a pool owner is forwarded only to an operator of one of its pools;
  ``route_tag`` from an operator reaches only the owner of that operator's call, during
  the chat or after it (the last ``RECENT`` ended calls are remembered for that).

Hooked into :class:`~chmail.chserver.calls.CallService` through its ``router``
attribute (calls.py asks :meth:`Router.route` for the callee, and tells
:meth:`Router.on_state` when a call is answered or gone).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from chmail import headers
from chmail import protocol as p
from chmail import protocol_routing as r
from chmail.chserver import routing_calls
from chmail.chserver.routing_model import (
    PASS_ON,
    Pool,
    Queued,
    Routed,
    as_push,
    live,
    pick,
    queued_text,
)
from chmail.errors import ChatError, HeaderError

if TYPE_CHECKING:
    from chmail.chserver.calls import ActiveCall, CallService
    from chmail.chserver.server import ChServer, Context

log = logging.getLogger(__name__)

MAX_POOL = 200
MAX_CAPACITY = 50
RECENT = 1000  # ended routed calls kept so their operator can still tag the member

__all__ = ["Router", "install", "pick"]


class Router:
    def __init__(self, calls: CallService) -> None:
        self.calls = calls
        self.seam = calls.seam
        self.pools: dict[tuple[str, int], Pool] = {}
        self.routed: dict[int, Routed] = {}  # call id -> routing facts
        self.recent: OrderedDict[int, Routed] = OrderedDict()  # ended, for late tags
        self.last_given: dict[str, float] = {}
        self.tickets = itertools.count(1)
        # queued calls being placed now -> their pool's campaign
        self._placing: dict[tuple[str, str], Pool] = {}
        self._asked: dict[tuple[str, str], float] = {}  # (member, message-id) -> first ask
        # (member, message-id) -> operators who turned that chat down (declined, let it
        # ring out, went offline): it is not offered to them again
        self._turned_down: dict[tuple[str, str], set[str]] = {}
        calls.router = self

    # ------------------------------------------------------------------ requests

    def set_pool(self, owner: str, msg: r.RoutePool) -> p.Ok:
        if not 0 < len(msg.operators) <= MAX_POOL or not 1 <= msg.capacity <= MAX_CAPACITY:
            raise ChatError(
                f"a pool needs 1 to {MAX_POOL} operators and a capacity of 1 to {MAX_CAPACITY}",
                code=p.E_INVALID,
            )
        for login in msg.operators:
            headers.check_login(login)
        key = (owner, msg.campaign)
        old = self.pools.get(key)
        pool = Pool(owner, msg.campaign, list(dict.fromkeys(msg.operators)), msg.capacity)
        if old is not None:
            pool.queue = old.queue
        self.pools[key] = pool
        return p.Ok(id=msg.id)

    def forward_brief(self, owner: str, msg: r.Brief) -> p.Ok:
        if not any(
            pl.owner == owner and msg.operator in pl.operators for pl in self.pools.values()
        ):
            raise ChatError("that operator is not in any of your pools", code=p.E_INVALID)
        self.seam.push(
            msg.operator,
            r.Brief(call=msg.call, operator=msg.operator, campaign=msg.campaign, data=msg.data),
        )
        return p.Ok(id=msg.id or 0)

    def tag(self, operator: str, msg: r.RouteTag) -> p.Ok:
        info = self.routed.get(msg.call) or self.recent.get(msg.call)
        if info is None or info.operator != operator:
            raise ChatError("that is not a campaign chat of yours", code=p.E_NOT_FOUND)
        self._event(
            info.pool,
            "tag",
            call=msg.call,
            member=info.caller,
            operator=operator,
            interests=[i[:40] for i in msg.interests[:20]],
        )
        return p.Ok(id=msg.id)

    async def dial(self, operator: str, msg: r.RouteDial) -> p.CallState:
        """S209: an operator calls a member; offline -> alarm (S215-S219)."""
        pool = next(
            (
                pl
                for pl in self.pools.values()
                if pl.campaign == msg.campaign and operator in pl.operators
            ),
            None,
        )
        if pool is None:
            raise ChatError("you are not an operator of that campaign", code=p.E_INVALID)
        member = headers.check_login(msg.member)
        subject = msg.subject or f"campaign {msg.campaign}"
        self._event(pool, "dialled", member=member, operator=operator)
        if not self.seam.is_online(member):
            return await routing_calls.alarm(self.calls, operator, member, subject, "", msg.id)
        return await routing_calls.place(self.calls, operator, member, subject, "", msg.id)

    # ------------------------------------------------------------------ hooks from calls

    def pool_for(self, owner: str, context: str) -> Pool | None:
        if not context:
            return None
        try:
            campaign = headers.parse_context(context).get("campaign", "")
        except HeaderError:
            return None
        if not campaign.isdigit():
            return None
        return self.pools.get((owner, int(campaign)))

    async def route(self, caller: str, msg: p.Call, owner: str) -> str | p.CallState:
        """For a campaign mail: ring an operator (or alarm one, or queue the member) and
        return the call's state; for any other mail: the owner, for calls.py to ring."""
        pool = self.pool_for(owner, msg.context)
        if pool is None:
            return owner
        key = (caller, msg.message_id)
        if any(i.caller == caller and i.message_id == msg.message_id for i in self.routed.values()):
            raise ChatError("you are already in a chat about this mail", code=p.E_RATE_LIMITED)
        requeued = key in self._placing
        if not requeued:
            if any(q.caller == caller and q.msg.message_id == msg.message_id for q in pool.queue):
                raise ChatError("you are already waiting for an operator", code=p.E_RATE_LIMITED)
            if not self.calls.per_caller.allow(caller, time.time()):
                raise ChatError(
                    "you have rung too often; wait a minute and try again", code=p.E_RATE_LIMITED
                )
            self._asked[key] = time.time()
            self._event(pool, "asked", member=caller)
        chosen = self._choose(pool, self._turned_down.get(key, set()))
        if chosen is not None:
            return await self._route_to(pool, caller, chosen, msg)
        ticket = -next(self.tickets)
        entry = Queued(ticket, caller, msg, self._asked.get(key, time.time()))
        if requeued:
            pool.queue.appendleft(entry)  # lost a race for the operator: stays first
        else:
            pool.queue.append(entry)
        pos = pool.queue.index(entry) + 1
        self._event(pool, "queued", member=caller, position=pos)
        return p.CallState(
            id=msg.id,
            call=ticket,
            state="queued",
            peer=owner,
            subject=msg.subject,
            message_id=msg.message_id,
            message=queued_text(pos),
        )

    async def _route_to(self, pool: Pool, caller: str, operator: str, msg: p.Call) -> p.CallState:
        from chmail.chserver.alarms import clean_subject

        subject = clean_subject(msg.subject)
        asked = self._asked.pop((caller, msg.message_id), time.time())
        self.last_given[operator] = time.time()
        if not self.seam.is_online(operator):
            st = await routing_calls.alarm(
                self.calls, caller, operator, subject, msg.message_id, msg.id
            )
            self._event(pool, "routed", call=st.call, member=caller, operator=operator)
            self._event(pool, "ended", call=st.call, member=caller, operator=operator)
            return st
        st = await routing_calls.place(
            self.calls, caller, operator, subject, msg.message_id, msg.id
        )
        self.routed[st.call] = Routed(pool, caller, operator, asked, msg.message_id, msg=msg)
        self._event(pool, "routed", call=st.call, member=caller, operator=operator)
        return st

    def _choose(self, pool: Pool, turned_down: set[str]) -> str | None:
        ops = [o for o in pool.operators if o not in turned_down] or pool.operators
        online = {o for o in ops if self.seam.is_online(o)}
        load = self._load()
        if online:
            return pick(ops, online, load, pool.capacity, self.last_given)
        # nobody online: the least recently given operator gets the alarm (S117)
        return min(ops, key=lambda o: (self.last_given.get(o, 0.0), ops.index(o)))

    def _load(self) -> dict[str, int]:
        load: dict[str, int] = {}
        for c in self.calls.calls.values():
            if c.state in ("ringing", "accepted"):
                for login in {c.caller, c.callee}:  # an operator's own dialled calls count
                    load[login] = load.get(login, 0) + 1
        return load

    def on_state(self, call: ActiveCall) -> None:
        """calls.py: ``call`` was answered, or is over (missed, declined, ended, ...)."""
        info = self.routed.get(call.id)
        if info is None:
            return
        if call.state == "accepted" and not info.answered:
            info.answered = True
            self._event(
                info.pool,
                "answered",
                call=call.id,
                member=info.caller,
                operator=info.operator,
                wait=time.time() - info.asked_at,
            )
            return
        if call.state in ("ringing", "accepted"):
            return
        self.routed.pop(call.id, None)
        key = (info.caller, info.message_id)
        if not info.answered and call.state in PASS_ON and info.msg is not None:
            self._pass_on(call.id, info, info.msg, call.state)
            return
        self._turned_down.pop(key, None)
        if info.answered:
            self.recent[call.id] = info
            while len(self.recent) > RECENT:
                self.recent.popitem(last=False)
        self._event(
            info.pool,
            "ended",
            call=call.id,
            member=info.caller,
            operator=info.operator,
            answered=info.answered,
        )
        self._serve_queue(info.pool)

    def _pass_on(self, call: int, info: Routed, msg: p.Call, why: str) -> None:
        """The operator turned a routed chat down (``why``): offer it to the next one.

        The member goes to the head of the queue (they asked before anyone queued after
        them) and the queue is served at once, so a free operator who has not turned the
        chat down rings now; with all of those busy the member is told their place.
        """
        pool, key = info.pool, (info.caller, info.message_id)
        tried = self._turned_down.setdefault(key, set())
        tried.add(info.operator)
        self._event(pool, "passed", call=call, member=info.caller, operator=info.operator)
        if all(o in tried for o in pool.operators):
            self._turned_down.pop(key, None)
            self._event(pool, "ended", member=info.caller, operator=info.operator)
            self.seam.push(
                info.caller,
                p.CallState(
                    call=0,
                    state="missed",
                    peer=pool.owner,
                    subject=msg.subject,
                    message_id=msg.message_id,
                    message="none of our operators can take your chat now; "
                    "please answer the mail or try again later",
                ),
            )
            self._serve_queue(pool)
            return
        log.info(
            "campaign %s: %s %s the chat of %s; passing it on",
            pool.campaign,
            info.operator,
            why,
            info.caller,
        )
        pool.queue.appendleft(Queued(-next(self.tickets), info.caller, msg, info.asked_at))
        if not self._serve_queue(pool):
            self._tell_positions(pool)  # nobody free who has not turned it down: waits

    def live(self, owner: str, msg: r.RouteState) -> r.RouteLive:
        return live(
            owner, msg.id, self.pools.values(), self.routed, self._placing, self._asked, self.recent
        )

    def cancel(self, login: str, ticket: int) -> p.CallState | None:
        """A queued member hung up: leave the queue."""
        for pool in self.pools.values():
            for q in list(pool.queue):
                if q.ticket == ticket and q.caller == login:
                    pool.queue.remove(q)
                    self._turned_down.pop((login, q.msg.message_id), None)
                    self._event(pool, "ended", member=login, answered=False)
                    self._tell_positions(pool)
                    return p.CallState(
                        call=ticket,
                        state="cancelled",
                        peer=pool.owner,
                        message="you left the queue",
                    )
        return None

    def _serve_queue(self, pool: Pool) -> bool:
        """Ring the first queued member a free operator can take (one who has not
        turned that member's chat down). True when one was placed."""
        for q in pool.queue:
            if self._choose_online(pool, q) is not None:
                pool.queue.remove(q)
                self._tell_positions(pool)
                self.calls.hub.spawn(self._place_queued(pool, q))
                return True
        return False

    def _choose_online(self, pool: Pool, q: Queued) -> str | None:
        turned_down = self._turned_down.get((q.caller, q.msg.message_id), set())
        ops = [o for o in pool.operators if o not in turned_down]
        online = {o for o in ops if self.seam.is_online(o)}
        return pick(ops, online, self._load(), pool.capacity, self.last_given)

    async def _place_queued(self, pool: Pool, q: Queued) -> None:
        key = (q.caller, q.msg.message_id)
        self._asked[key] = q.at
        self._placing[key] = pool
        try:
            # Re-enters calls.call(): the link is checked again and the operator chosen
            # now; its "asked" event was counted when the member first asked.
            state = await self.calls.call(q.caller, q.msg)
        except Exception as exc:  # the member is told, the queue carries on
            log.info("queued call of %s could not be placed: %s", q.caller, exc)
            state = p.CallState(
                call=q.ticket,
                state="missed",
                peer=pool.owner,
                message=f"the chat could not be started: {exc}",
            )
        finally:
            self._placing.pop(key, None)
        self.seam.push(q.caller, as_push(state, q.ticket))

    def _tell_positions(self, pool: Pool) -> None:
        for i, q in enumerate(pool.queue, start=1):
            self.seam.push(
                q.caller,
                p.CallState(
                    call=q.ticket,
                    state="queued",
                    peer=pool.owner,
                    subject=q.msg.subject,
                    message_id=q.msg.message_id,
                    message=queued_text(i),
                ),
            )

    def _event(
        self,
        pool: Pool,
        kind: str,
        *,
        call: int = 0,
        member: str = "",
        operator: str = "",
        wait: float = 0.0,
        position: int = 0,
        answered: bool = False,
        interests: list[str] | None = None,
    ) -> None:
        self.seam.push(
            pool.owner,
            r.RouteEvent(
                kind=kind,
                campaign=pool.campaign,
                call=call,
                member=member,
                operator=operator,
                at=time.time(),
                wait=wait,
                position=position,
                answered=answered,
                interests=interests or [],
            ),
        )


def install(server: ChServer) -> Router:
    """Wire routing into a server whose chat wiring put its CallService in
    ``server.extensions["calls"]``; registers the routing requests."""
    calls: CallService = server.extensions["calls"]
    router = Router(calls)
    server.extensions["routing"] = router

    async def on_pool(ctx: Context, msg: r.RoutePool) -> p.Message:
        return router.set_pool(ctx.require_login(), msg)

    async def on_brief(ctx: Context, msg: r.Brief) -> p.Message:
        return router.forward_brief(ctx.require_login(), msg)

    async def on_tag(ctx: Context, msg: r.RouteTag) -> p.Message:
        return router.tag(ctx.require_login(), msg)

    async def on_state(ctx: Context, msg: r.RouteState) -> p.Message:
        return router.live(ctx.require_login(), msg)

    async def on_dial(ctx: Context, msg: r.RouteDial) -> p.Message:
        return await router.dial(ctx.require_login(), msg)

    server.register("route_pool", on_pool)
    server.register("brief", on_brief)
    server.register("route_tag", on_tag)
    server.register("route_dial", on_dial)
    server.register("route_state", on_state)
    return router
