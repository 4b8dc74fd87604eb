"""What the operator router keeps, and its pure decisions (see routing.py's rules)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from chmail import protocol as p
from chmail import protocol_routing as r

# route_live stays well inside a frame (64 KiB): about 100 bytes an entry
MAX_LIVE = 400
MAX_LIVE_ENDED = 100


@dataclass
class Pool:
    owner: str
    campaign: int
    operators: list[str]
    capacity: int
    queue: deque[Queued] = field(default_factory=deque)


@dataclass
class Queued:
    ticket: int  # negative: never a real call id
    caller: str
    msg: p.Call
    at: float


@dataclass
class Routed:
    """What the router knows of a campaign call it placed."""

    pool: Pool
    caller: str
    operator: str
    asked_at: float
    message_id: str = ""
    answered: bool = False
    msg: p.Call | None = None  # the member's call, to pass it on if it is turned down


PASS_ON = ("declined", "missed", "alarmed")  # a routed call ending so goes to the next


def pick(
    operators: list[str],
    online: set[str],
    load: dict[str, int],
    capacity: int,
    last_given: dict[str, float],
) -> str | None:
    """The least busy online operator below capacity, or None. Pure."""
    free = [o for o in operators if o in online and load.get(o, 0) < capacity]
    if not free:
        return None
    return min(free, key=lambda o: (load.get(o, 0), last_given.get(o, 0.0), operators.index(o)))


def queued_text(pos: int) -> str:
    ahead = "you are next" if pos == 1 else f"you are number {pos} in the queue"
    return f"all our operators are busy; {ahead}"


def as_push(state: p.CallState, ticket: int) -> p.CallState:
    d = state.to_wire()
    d.pop("t", None)
    d["id"] = None
    d.setdefault("message", "")
    d["message"] = (d["message"] + f" (queue ticket {ticket})").strip()
    return p.CallState(**d)


def live(
    owner: str,
    req: int,
    pools: Iterable[Pool],
    routed: Mapping[int, Routed],
    placing: Mapping[tuple[str, str], Pool],
    asked: Mapping[tuple[str, str], float],
    recent: Mapping[int, Routed],
) -> r.RouteLive:
    """``route_live``: the owner's campaign chats going on now (the shop rebuilds its
    board from it after a restart or a lost link). Pure."""
    calls = [
        {
            "campaign": i.pool.campaign,
            "call": cid,
            "member": i.caller,
            "operator": i.operator,
            "answered": i.answered,
            "asked_at": i.asked_at,
        }
        for cid, i in routed.items()
        if i.pool.owner == owner
    ]
    waiting = [
        {"campaign": pool.campaign, "member": q.caller, "asked_at": q.at}
        for pool in pools
        if pool.owner == owner
        for q in pool.queue
    ]
    waiting += [  # taken from the queue, being placed right now
        {"campaign": pool.campaign, "member": key[0], "asked_at": asked.get(key, 0.0)}
        for key, pool in placing.items()
        if pool.owner == owner
    ]
    ended = [  # answered, then ended: the shop may have missed either event
        {
            "campaign": i.pool.campaign,
            "call": cid,
            "member": i.caller,
            "operator": i.operator,
            "answered": True,
            "asked_at": i.asked_at,
        }
        for cid, i in reversed(list(recent.items()))
        if i.pool.owner == owner
    ]
    complete = len(calls) + len(waiting) <= MAX_LIVE
    return r.RouteLive(
        id=req,
        calls=calls[:MAX_LIVE],
        waiting=waiting[: max(0, MAX_LIVE - len(calls))],
        ended=ended[:MAX_LIVE_ENDED],
        complete=complete,
    )
