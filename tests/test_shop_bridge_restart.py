"""The shop's bridge restarts while campaign chats go on: it rebuilds its open chats from
the shop DB and the CH server's route_state (real server, real clients, real SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chmail.client.chat import CallEvent, RingEvent
from shop_publicity import board, campaigns, members, products
from shop_publicity.chbridge import Bridge
from shop_publicity.store import Store
from tests.chat_helpers import Client, chat_config, connect, next_event
from tests.fixtures.chserver import ServerFactory
from tests.shop_support import shop_config
from tests.test_shop_passon import campaign_mail

MEMBERS = ("ann", "bob", "cho")


async def poll(check: Callable[[], Awaitable[bool]]) -> None:
    """Await ``check`` until it holds (15 s at most)."""
    async with asyncio.timeout(15):
        while not await check():
            await asyncio.sleep(0.02)


async def test_bridge_restart_rebuilds_open_chats_and_board(
    chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """While the bridge is down Ann's chat is answered and ends, Bob (queued) is rung and
    Cho asks: the restarted bridge counts Ann answered and ended, Bob and Cho waiting, and
    records Bob's answer that comes after the restart."""
    srv = await chserver_factory(**chat_config())
    for login in ("mall", "olga", *MEMBERS):
        await srv.add_user(login, emails=[f"{login}@example.com"])
    (tmp_path / "m.csv").write_text(
        "email,name,login\n" + "".join(f"{x}@example.com,{x.title()},{x}\n" for x in MEMBERS),
        encoding="utf-8",
    )
    store = await Store.open(tmp_path / "shop")
    clients: list[Client] = []
    runs: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    try:
        await members.import_csv(store, tmp_path / "m.csv")
        await products.add(store, products.check_product("A-100", "Trail shoe", price="89"))
        await store.add_operator("olga", "operator")
        cid = await campaigns.create(
            store, shop_config(25), name="s", sku="A-100", pool=["olga"], subject="s", body="b"
        )
        for login in ("mall", "olga", *MEMBERS):
            clients.append(await connect(srv, login))
        mall, olga, ann, bob, cho = clients
        mails = {x: await campaign_mail(mall, x, cid) for x in MEMBERS}
        b = board.Board()

        async def figures(**want: Any) -> bool:
            await b.catch_up(store, cid)
            got = b.figures(cid)
            return all(got[k] == v for k, v in want.items())

        def start() -> Bridge:
            bridge = Bridge(store, mall.link, capacity=1)
            stop = asyncio.Event()
            runs.append((stop, asyncio.create_task(bridge.run(stop))))
            return bridge

        async def halt() -> None:
            stop, task = runs[-1]
            stop.set()
            await task

        start()
        routing = srv.server.extensions["routing"]
        async with asyncio.timeout(10):
            while not routing.pools:
                await asyncio.sleep(0.01)
        st_ann = await ann.engine.escalate(mails["ann"])
        assert st_ann.peer == "olga"
        st_bob = await bob.engine.escalate(mails["bob"])
        assert st_bob.state == "queued"
        await poll(lambda: figures(chats_asked=2, waiting_now=2))
        await halt()  # the shop goes down

        ring = (
            await next_event(olga.engine.events, RingEvent, lambda e: e.ring.caller == "ann")
        ).ring
        await olga.engine.answer(ring.call, accept=True)
        await ann.engine.wait_state(st_ann.call, ("accepted",))
        await olga.engine.hangup(ring.call)  # Ann's chat ends; Bob is rung
        await next_event(bob.engine.events, CallEvent, lambda e: e.state.state == "ringing")
        st_cho = await cho.engine.escalate(mails["cho"])
        assert st_cho.state == "queued"

        bridge = start()  # the shop is back
        await poll(lambda: figures(chats_asked=3, chats_answered=1, waiting_now=2))
        assert set(bridge.open_chats) == {(cid, "bob"), (cid, "cho")}
        ring = (
            await next_event(olga.engine.events, RingEvent, lambda e: e.ring.caller == "bob")
        ).ring
        await olga.engine.answer(ring.call, accept=True)
        await poll(lambda: figures(chats_asked=3, chats_answered=2, waiting_now=1))
    finally:
        for stop, task in runs:
            stop.set()
            await task
        for c in clients:
            await c.close()
        await store.close()
