"""The shop's live link to the CH server: chat ports for campaign mail, operator pools,
and the routing events that feed the board (S201-S219).

* Every campaign mail gets its own signed X-CH headers: one ``alloc`` per recipient
  mail. All of a campaign's mails share the campaign's port: the first is allocated
  alone and becomes the campaign's anchor; the others name it in ``thread`` (same login
  and context), so the server signs each mail separately and accumulates the
  recipients on one lease. The anchor is kept in the shop DB, so a resumed send
  reuses the port.
* ``Bridge`` (``chmail-shop bridge``) stays logged in as the shop: it registers each
  campaign's operator pool (again on every reconnect), writes the server's
  ``route_event`` pushes into the shop DB (chats per campaign, events for the board),
  sends the operator a ``brief`` (campaign, product, the member's chat profile, past
  chats, canned replies) when a chat is routed to them, and stores the interests
  operators tag. Its open chats are rebuilt at start and after every reconnect from the
  shop DB and the CH server's ``route_state``, so a restart of the shop (or of the link)
  loses no chat and leaves no ended chat "waiting" on the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from chmail import protocol_routing as r
from chmail.client.chlink import ChLink, LinkState
from chmail.config import ShopConfig, parse_hostport
from chmail.errors import ChmailError, ShopError
from chmail.headers import ChatLink
from shop_publicity import models as m
from shop_publicity.members import check_tag
from shop_publicity.sender import Allocate
from shop_publicity.store import Store

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_link(cfg: ShopConfig) -> AsyncIterator[ChLink]:
    from shop_publicity.run import password_from_command

    if not cfg.ch_server or not cfg.ch_login:
        raise ShopError("Set [shop] ch_server and ch_login to give campaign mail a chat link.")
    host, port = parse_hostport(cfg.ch_server, default_port=7380)
    password = await password_from_command(cfg.ch_password_command)
    link = ChLink(host, port, cfg.ch_login, password, agent="chmail-shop")
    await link.start()
    try:
        yield link
    finally:
        await link.close()


class CampaignAllocator:
    """``Allocate`` for one campaign: per-mail signatures on the campaign's port."""

    def __init__(self, link: ChLink, store: Store, cid: int) -> None:
        self.link = link
        self.store = store
        self.key = f"anchor:{cid}"
        self.anchor: str | None = None
        self.lock = asyncio.Lock()

    async def __call__(self, message_id: str, recipients: list[str], context: str) -> ChatLink:
        if self.anchor is None:
            async with self.lock:
                if self.anchor is None:
                    self.anchor = await self.store.setting(self.key)
                if self.anchor is None:
                    got = await self.link.alloc_port(message_id, recipients, (), context)
                    self.anchor = await self.store.setting_init(self.key, message_id)
                    return got
        thread = [] if self.anchor == message_id else [self.anchor]
        return await self.link.alloc_port(message_id, recipients, thread, context)


async def register_pools(link: ChLink, store: Store, capacity: int) -> int:
    n = 0
    for cid in await store.campaign_ids():
        camp = await store.campaign(cid)
        if camp is None or not camp.pool:
            continue
        await link.request(r.RoutePool(campaign=cid, operators=list(camp.pool), capacity=capacity))
        n += 1
    return n


@contextlib.asynccontextmanager
async def open_allocator(cfg: ShopConfig, store: Store, cid: int) -> AsyncIterator[Allocate]:
    async with open_link(cfg) as link:
        await register_pools(link, store, cfg.operator_capacity)
        yield CampaignAllocator(link, store, cid)


class Bridge:
    """Routing events in, briefs out. Runs until ``stop`` is set."""

    def __init__(self, store: Store, link: ChLink, capacity: int = 2) -> None:
        self.store = store
        self.link = link
        self.capacity = capacity
        self.open_chats: dict[tuple[int, str], int] = {}  # (campaign, member login) -> chat
        self.by_call: dict[int, int] = {}  # routed call id -> chat id
        self.answered: set[int] = set()  # chat ids whose answer is recorded
        self.handled = 0  # events written (tests wait on it)
        self.changed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        queue = self.link.subscribe()
        reconnected = asyncio.Event()

        def on_state(state: LinkState) -> None:
            if state is LinkState.CONNECTED:
                reconnected.set()

        self.link.on_state(on_state)
        await register_pools(self.link, self.store, self.capacity)
        await self.resync()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                again = asyncio.ensure_future(reconnected.wait())
                await asyncio.wait({getter, again, stopper}, return_when=asyncio.FIRST_COMPLETED)
                again.cancel()
                if reconnected.is_set():
                    reconnected.clear()
                    with contextlib.suppress(ChmailError):
                        await register_pools(self.link, self.store, self.capacity)
                        await self.resync()
                if not getter.done():
                    getter.cancel()
                    continue
                msg = getter.result()
                if isinstance(msg, r.RouteEvent):
                    try:
                        await self.handle(msg)
                    except ChmailError as exc:
                        log.warning("routing event %s not recorded: %s", msg.kind, exc)
        finally:
            stopper.cancel()
            self.link.unsubscribe(queue)

    async def handle(self, ev: r.RouteEvent) -> None:
        member = await self.store.member(ev.member) if ev.member else None
        mid = member.id if member is not None else None
        cid = ev.campaign
        key = (cid, ev.member)
        if ev.kind == "asked":
            if key not in self.open_chats:  # (a resync may have opened it already)
                self.open_chats[key] = await self.store.chat_asked(cid, mid, ev.member, ev.at)
        elif ev.kind == "routed":
            chat = self.open_chats.get(key)
            if chat is not None:
                self.by_call[ev.call] = chat
            await self._brief(ev, member)
        elif ev.kind == "passed":
            # the operator turned it down; the server offers it to the next one, so the
            # chat stays open (and waiting) under its next call
            self.by_call.pop(ev.call, None)
        elif ev.kind == "answered":
            chat = self.by_call.get(ev.call)
            if chat is not None and chat not in self.answered:
                self.answered.add(chat)
                await self.store.chat_answered(chat, ev.operator, ev.at)
        elif ev.kind == "ended":
            chat = self.by_call.pop(ev.call, None) or self.open_chats.get(key)
            if chat is not None:
                await self._end(key, chat, mid, ev.at, ev.answered)
        elif ev.kind == "tag" and mid is not None:
            for interest in ev.interests:
                with contextlib.suppress(ShopError):
                    await self.store.tag_interest(mid, check_tag(interest, "interest"), ev.operator)
        self.handled += 1
        self.changed.set()

    async def _end(
        self, key: tuple[int, str], chat: int, mid: int | None, at: float, answered: bool
    ) -> None:
        self.open_chats.pop(key, None)
        self.answered.discard(chat)
        await self.store.chat_ended(chat, at)
        await self.store.add_event(key[0], m.EV_CHAT_ENDED, mid, {"answered": answered}, at=at)

    async def resync(self) -> None:
        """Rebuild the open chats from the shop DB and what the CH server says is going on
        now (``route_state``), after a start or a lost link: chats that ended while the
        bridge was away are closed (as unanswered unless their answer was recorded),
        chats asked meanwhile are opened, answers given meanwhile are recorded."""
        reply = await self.link.request(r.RouteState())
        if not isinstance(reply, r.RouteLive):
            raise ShopError(f"The CH server answered route_state with {reply.t!r}.")
        now = time.time()
        known = await self.store.open_chats()
        self.open_chats = {(cid, login): chat for chat, cid, login, _ in known}
        self.answered = {chat for chat, _, _, answered in known if answered}
        self.by_call = {}
        live: dict[tuple[int, str], dict[str, Any]] = {}
        for item in [*reply.calls, *reply.waiting]:
            campaign, login = item.get("campaign"), item.get("member")
            if isinstance(campaign, int) and isinstance(login, str):
                live.setdefault((campaign, login), item)
        ended: dict[tuple[int, str], dict[str, Any]] = {}
        for item in reply.ended:
            campaign, login = item.get("campaign"), item.get("member")
            if isinstance(campaign, int) and isinstance(login, str):
                ended.setdefault((campaign, login), item)
        for key, gone in list(self.open_chats.items()):
            if key in live:
                continue
            if not reply.complete and key not in ended:
                continue  # the server's lists were cut short: this one may still be live
            if key in ended and gone not in self.answered:
                self.answered.add(gone)
                await self.store.chat_answered(gone, str(ended[key].get("operator", "")), now)
            member = await self.store.member(key[1])
            await self._end(key, gone, member.id if member else None, now, gone in self.answered)
        for key, item in live.items():
            found = self.open_chats.get(key)
            if found is not None:
                chat = found
            else:
                member = await self.store.member(key[1])
                asked = item.get("asked_at")
                chat = self.open_chats[key] = await self.store.chat_asked(
                    key[0],
                    member.id if member else None,
                    key[1],
                    float(asked) if isinstance(asked, int | float) and asked else now,
                )
            call = item.get("call")
            if isinstance(call, int):
                self.by_call[call] = chat
            if item.get("answered") is True and chat not in self.answered:
                self.answered.add(chat)
                await self.store.chat_answered(chat, str(item.get("operator", "")), now)
        self.changed.set()

    async def _brief(self, ev: r.RouteEvent, member: m.Member | None) -> None:
        camp = await self.store.campaign(ev.campaign)
        data: dict[str, Any] = {"campaign": {"id": ev.campaign, "name": camp.name if camp else ""}}
        if camp is not None and camp.sku:
            product = await self.store.product(camp.sku)
            data["product"] = product.to_json() if product else {"sku": camp.sku}
        if member is not None:
            data["member"] = member.chat_profile()
            data["past_chats"] = [
                {k: c[k] for k in ("campaign_name", "operator", "asked_at", "summary")}
                for c in await self.store.past_chats(member.id)
            ]
        else:
            data["member"] = {"login": ev.member}
        data["canned"] = dict(await self.store.canned())
        try:
            await self.link.request(
                r.Brief(call=ev.call, operator=ev.operator, campaign=ev.campaign, data=data)
            )
        except ChmailError as exc:
            log.warning("brief for call %s not delivered: %s", ev.call, exc)


async def run_bridge(cfg: ShopConfig, store: Store, stop: asyncio.Event | None = None) -> None:
    async with open_link(cfg) as link:
        await Bridge(store, link, cfg.operator_capacity).run(stop or asyncio.Event())
