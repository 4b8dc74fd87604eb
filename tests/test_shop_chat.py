"""Campaign mail to chat, end to end: a real CH server, the shop's sender and bridge,
real member and operator clients (ChLink + chat engine), real chat sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from chmail import headers
from chmail import protocol_routing as r
from chmail.client.chat import CallEvent, RingEvent, mail_ref
from chmail.client.chatsession import Line
from chmail.client.operator import OperatorDesk
from shop_publicity import board, campaigns, members, products, run
from shop_publicity.chbridge import Bridge
from shop_publicity.models import Segment
from shop_publicity.store import Store
from tests.chat_helpers import Client, chat_config, connect, next_event, until
from tests.fixtures.chserver import ServerFactory
from tests.shop_support import Sink, shop_config, start_sink

MEMBERS = ("ann", "bob", "cho", "dan")


async def poll(check: Callable[[], Awaitable[bool]]) -> None:
    """Await ``check`` until it holds (10 s at most)."""
    async with asyncio.timeout(10):
        while not await check():
            await asyncio.sleep(0.01)


CSV = "email,name,login,interests\n" + "".join(
    f"{m}@example.com,{m.title()} Example,{m},shoes\n" for m in MEMBERS
)


async def test_campaign_chat_routing_queue_tags_dial_and_board(
    chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """Members press c on their campaign mail: each reaches the least busy operator with a
    brief; with all busy the next one queues and is rung when an operator frees up; tags
    become interests; an operator's call to an offline member leaves an alarm; the
    board counts exactly these chats."""
    srv = await chserver_factory(**chat_config())
    for login in ("mall", "olga", "piet", *MEMBERS):
        await srv.add_user(login, emails=[f"{login}@example.com"])
    sink = Sink(keep=True)
    smtp, port = await start_sink(sink)
    (tmp_path / "m.csv").write_text(CSV, encoding="utf-8")
    store = await Store.open(tmp_path / "shop")
    clients: list[Client] = []
    stop = asyncio.Event()
    bridge_task = None
    try:
        await members.import_csv(store, tmp_path / "m.csv")
        await products.add(store, products.check_product("A-100", "Trail shoe", price="89"))
        for op in ("olga", "piet"):
            await store.add_operator(op, "operator")
        await store.set_canned("hi", "Hello! How can I help?")
        cfg = shop_config(
            port,
            ch_server=srv.address,
            ch_login="mall",
            ch_password_command=f"echo {srv.passwords['mall']}",
            operator_capacity=1,
        )
        cid = await campaigns.create(
            store,
            cfg,
            name="spring",
            sku="A-100",
            pool=["olga", "piet"],
            subject="{{ product.title }} for {{ member.first_name }}",
            body="Press c to chat.\n",
        )
        res = await run.send(store, cfg, cid, tmp_path / "shop", quiet=True)
        assert res.status == "done"
        mails = {m["To"].addresses[0].username: m for m in sink.messages}
        links = {k: headers.parse(list(v.items())) for k, v in mails.items()}
        assert len({lk.port for lk in links.values() if lk}) == 1  # the campaign's port
        assert len({lk.mac for lk in links.values() if lk}) == 4  # signed per recipient
        assert all(lk and lk.context == "campaign=1; sku=A-100; lang=en" for lk in links.values())

        link = srv.link("mall")
        await link.start()
        bridge = Bridge(store, link, capacity=1)
        bridge_task = asyncio.create_task(bridge.run(stop))
        await until(lambda: bool(srv.server.extensions["routing"].pools))
        for login in ("olga", "piet", "ann", "bob", "cho"):
            clients.append(await connect(srv, login))
        olga, _piet, ann, bob, cho = clients
        olga_pushes = olga.link.subscribe()
        desk = OperatorDesk(olga.link)

        st_ann = await ann.engine.escalate(mail_ref(mails["ann"]))
        assert (st_ann.state, st_ann.peer) == ("ringing", "olga")
        st_bob = await bob.engine.escalate(mail_ref(mails["bob"]))
        assert (st_bob.state, st_bob.peer) == ("ringing", "piet")  # the less busy one
        st_cho = await cho.engine.escalate(mail_ref(mails["cho"]))
        assert st_cho.state == "queued"
        assert "you are next" in st_cho.message

        brief = await next_event(olga_pushes, r.Brief)
        assert brief.data["member"]["name"] == "Ann"
        assert "email" not in brief.data["member"]  # PII only as far as a chat needs
        assert brief.data["product"]["title"] == "Trail shoe"
        assert brief.data["canned"] == {"hi": "Hello! How can I help?"}
        ring = (await next_event(olga.engine.events, RingEvent)).ring
        mine = await olga.engine.answer(ring.call, accept=True)
        theirs = await ann.engine.wait_state(st_ann.call)
        assert theirs.state == "accepted"
        s_olga, s_ann = await olga.join(mine), await ann.join(theirs)
        s_ann.say("Is it waterproof?")
        got = await next_event(s_olga.events, Line, lambda ln: not ln.mine)
        assert (got.login, got.text) == ("ann", "Is it waterproof?")
        assert desk.brief(ring.call) is not None
        s_olga.say(desk.canned(ring.call, "hi"))  # one key away
        await next_event(s_ann.events, Line, lambda ln: not ln.mine)

        await desk.tag(ring.call, ["trail running"])
        await olga.engine.hangup(ring.call)  # ann's chat ends; cho is next
        moved = await next_event(cho.engine.events, CallEvent, lambda e: e.state.state == "ringing")
        assert moved.state.peer == "olga"

        dialled = await desk.dial("dan", cid)
        assert dialled.state == "alarmed"
        assert await srv.server.extensions["alarms"].count("dan") == 1

        async def tagged() -> bool:
            row = await store.member("ann")
            return row is not None and "trail running" in row.interests

        await poll(tagged)
        seg = await store.segment_member_ids(Segment(interests=("trail running",)))
        assert [e for _, e in seg] == ["ann@example.com"]

        b = board.Board()

        async def settled() -> bool:
            await b.catch_up(store, cid)
            return b.figures(cid)["chats_answered"] == 1 and bridge.open_chats.keys() == {
                (cid, "bob"),
                (cid, "cho"),
            }

        await poll(settled)
        fig = b.figures(cid)
        assert fig["sent"] == 4
        assert fig["chats_asked"] == 3
        assert fig["chats_answered"] == 1
        assert fig["waiting_now"] == 2  # bob and cho are being rung
        assert fig["median_answer_s"] is not None
        assert fig["response_rate"] == 0.75
    finally:
        stop.set()
        if bridge_task is not None:
            await bridge_task
        for c in clients:
            await c.close()
        await store.close()
        smtp.close()
