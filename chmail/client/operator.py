"""The operator's side of campaign chats (S209-S219), for the TUI to bind keys to.

An operator runs chmail with an operator login. Calls reach them like any call (ring,
answer, join: chmail.client.chat); this adds what a campaign chat brings along:

* ``briefs``: per call, what the shop sent (campaign, product, the member's chat
  profile, past chats, canned replies), kept as they arrive;
* ``canned(call, key)``: a canned reply's text, so one key can say it;
  ``replies(call)``: all of them, in a stable order (the TUI numbers them 1-9);
* ``tag(call, interests)``: interests for the member (the shop stores them);
* ``dial(member, campaign)``: call a member (an offline one gets an alarm).

No textual here: the TUI shows ``briefs`` and calls these methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chmail import protocol as p
from chmail import protocol_routing as r
from chmail.client.chlink import ChLink
from chmail.errors import ChatError


class OperatorDesk:
    def __init__(self, link: ChLink) -> None:
        self.link = link
        self.briefs: dict[int, dict[str, Any]] = {}
        self.listeners: list[Callable[[int, dict[str, Any]], Any]] = []
        self._unsub = link.on_push(self._on_push)

    def _on_push(self, msg: p.Message) -> None:
        if isinstance(msg, r.Brief):
            data = {"campaign_id": msg.campaign, **msg.data}
            self.briefs[msg.call] = data
            for cb in self.listeners:
                cb(msg.call, data)

    def brief(self, call: int) -> dict[str, Any] | None:
        return self.briefs.get(call)

    def canned(self, call: int, key: str) -> str:
        replies = (self.briefs.get(call) or {}).get("canned") or {}
        if key not in replies:
            known = ", ".join(sorted(replies)) or "none"
            raise ChatError(f"There is no canned reply {key!r} (known: {known}).")
        return str(replies[key])

    def replies(self, call: int) -> list[tuple[str, str]]:
        """The canned replies the shop sent with this call's brief, sorted by key."""
        replies = (self.briefs.get(call) or {}).get("canned") or {}
        return sorted((str(k), str(v)) for k, v in replies.items())

    def last_campaign(self) -> int | None:
        """The campaign of the newest brief (what an operator most likely dials about)."""
        for data in reversed(self.briefs.values()):
            if isinstance(data.get("campaign_id"), int) and data["campaign_id"] > 0:
                return int(data["campaign_id"])
        return None

    async def tag(self, call: int, interests: list[str]) -> None:
        await self.link.request(r.RouteTag(call=call, interests=interests))

    async def dial(self, member: str, campaign: int, subject: str = "") -> p.CallState:
        reply = await self.link.request(
            r.RouteDial(member=member, campaign=campaign, subject=subject)
        )
        if not isinstance(reply, p.CallState):
            raise ChatError(f"The CH server answered route_dial with {reply.t!r}.")
        return reply

    def close(self) -> None:
        self._unsub()
