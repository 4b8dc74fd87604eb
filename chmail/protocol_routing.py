"""CH wire messages of operator routing (mall publicity, patent S207-S219). Sans-I/O.

Kept beside ``chmail.protocol`` (same registry, same rules) so the routing work adds
types without editing the core's file; importing this module registers them.

* ``route_pool`` (shop -> server): campaign N's chats go to these operators, each
  taking at most ``capacity`` chats at once. Sent by the login that owns the campaign's
  mail (the shop's CH login), again on every reconnect; answered by ``ok``.
* ``route_event`` (server -> shop, push): what happened to a campaign chat: ``asked``,
  ``queued`` (with ``position``), ``routed`` (to ``operator``), ``answered`` (``wait``
  seconds after asked), ``passed`` (``operator`` turned call ``call`` down; the member
  is offered to the next operator, or queued), ``ended`` (``answered`` says whether it
  ever was), ``tag``
  (``interests`` an operator gave the member), ``dialled`` (an operator called a member).
* ``brief`` (shop -> server -> operator): what the operator sees for a call: campaign,
  product, the member's chat profile, past chats, canned replies (``data``). The server
  forwards it only from a pool's owner to an operator of that pool.
* ``route_tag`` (operator -> server): interests for the member of call ``call``.
* ``route_dial`` (operator -> server): call member ``member`` about ``campaign`` (S209);
  an offline member gets an alarm (S215-S219). Answered by ``call_state``.
* ``route_state`` (shop -> server): which of my campaign chats are going on now?
  Answered by ``route_live``: ``calls`` (``campaign``, ``call``, ``member``,
  ``operator``, ``answered``, ``asked_at``), ``waiting`` (queued members:
  ``campaign``, ``member``, ``asked_at``), ``ended`` (the newest answered chats that have
  ended, same keys as ``calls``) and ``complete`` (false when the lists were cut to fit
  a frame).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from chmail.protocol import Message, message


@message("route_pool", sender="c")
class RoutePool(Message):
    id: int = 0
    campaign: int = 0
    operators: list[str] = field(default_factory=list)
    capacity: int = 2


@message("route_event", sender="s")
class RouteEvent(Message):
    kind: str = ""
    campaign: int = 0
    call: int = 0
    member: str = ""
    operator: str = ""
    at: float = 0.0
    wait: float = 0.0
    position: int = 0
    answered: bool = False
    interests: list[str] = field(default_factory=list)


@message("brief", sender="cs")
class Brief(Message):
    id: int | None = None
    call: int = 0
    operator: str = ""
    campaign: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@message("route_tag", sender="c")
class RouteTag(Message):
    id: int = 0
    call: int = 0
    interests: list[str] = field(default_factory=list)


@message("route_dial", sender="c")
class RouteDial(Message):
    id: int = 0
    member: str = ""
    campaign: int = 0
    subject: str = ""


@message("route_state", sender="c")
class RouteState(Message):
    id: int = 0


@message("route_live", sender="s")
class RouteLive(Message):
    id: int | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    ended: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True
