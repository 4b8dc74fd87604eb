"""The operator's keys in the chmail TUI on a campaign chat, end to end: the real CH
server, the shop's bridge and store, the operator's real TUI (Pilot) and a real member
client: canned replies, interest tags the shop stores, calling an offline member."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from chmail.client.chat import mail_ref
from chmail.client.chatsession import Line
from chmail.client.chlink import ChLink
from chmail.client.compose import stamp
from chmail.client.tui.screens.operator import OperatorScreen
from chmail.client.tui.screens.operator_keys import CannedScreen, DialScreen, TagScreen, parse_tags
from chmail.client.tui.screens.ring import RingScreen
from chmail.client.tui.widgets.chat_pane import ChatPane
from chmail.client.tui.widgets.status import StatusBar
from shop_publicity import campaigns, members, products
from shop_publicity.chbridge import Bridge
from shop_publicity.models import Segment
from shop_publicity.store import Store
from tests.chat_helpers import next_event
from tests.fixtures.chserver import ServerFactory
from tests.fixtures.mailstack import MailUser
from tests.shop_support import shop_config
from tests.test_tui_chat import other_client
from tests.tui_env import (
    add_ch_user,
    chat_server_config,
    config_for,
    mail,
    running_tui,
    screen_text,
    wait_for,
)


async def poll(check: Callable[[], Awaitable[bool]]) -> None:
    """Await ``check`` until it holds (20 s at most)."""
    async with asyncio.timeout(20):
        while not await check():
            await asyncio.sleep(0.02)


def test_tags_are_split_trimmed_and_deduplicated() -> None:
    """What the operator types in the tag box becomes clean, distinct interests."""
    assert parse_tags(" Trail  Running, rain jackets,,trail running ") == [
        "trail running",
        "rain jackets",
    ]
    assert parse_tags(" , ") == []


async def test_operator_keys_canned_reply_tag_and_call(
    mail_user: MailUser, mail_user2: MailUser, chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """In a routed campaign chat the operator says a canned reply with one key (F2) and
    another from the ctrl+o list; tags the member's interests with the remapped tag key
    (the shop stores them and --for-interest targets the member); and from the queue (Q,
    d) calls an offline member, who gets an alarm, and an online one, whose accept opens
    the chat."""
    operator, member = mail_user, mail_user2
    srv = await chserver_factory(**chat_server_config())
    for u in (operator, member):
        await add_ch_user(srv, u)
    await srv.add_user("mall", emails=["mall@shop.example"])
    await srv.add_user("dan", emails=["dan@example.com"])
    csv = tmp_path / "members.csv"
    csv.write_text(
        "email,name,login\n"
        f"{member.address},Mia Member,{member.name}\n"
        "dan@example.com,Dan Example,dan\n",
        encoding="utf-8",
    )
    store = await Store.open(tmp_path / "shop")
    mall = ChLink(srv.host, srv.port, "mall", srv.passwords["mall"])
    stop = asyncio.Event()
    bridge_task: asyncio.Task[None] | None = None
    try:
        await members.import_csv(store, csv)
        await products.add(store, products.check_product("A-100", "Trail shoe", price="89"))
        await store.add_operator(operator.name, "operator")
        await store.set_canned("bye", "Thanks for asking!")
        await store.set_canned("hi", "Hello! How can I help?")
        cid = await campaigns.create(
            store,
            shop_config(25),
            name="autumn",
            sku="A-100",
            pool=[operator.name],
            subject="{{ product.title }}",
            body="Ask us!\n",
        )
        await mall.start()
        bridge = Bridge(store, mall, capacity=1)
        bridge_task = asyncio.create_task(bridge.run(stop))
        routing = srv.server.extensions["routing"]
        async with asyncio.timeout(10):
            while not routing.pools:
                await asyncio.sleep(0.01)
        msg, mid = mail("mall@shop.example", member.address, "Trail shoe", "Ask us!\n")
        link = await mall.alloc_port(mid, [member.address], context=f"campaign={cid}; sku=A-100")
        raw = stamp(bytes(msg), link)
        config = config_for(operator, srv, keys={"chat.tag": "ctrl+y"})
        async with (
            running_tui(config, tmp_path) as (app, pilot),
            other_client(srv, member) as customer,
        ):
            await wait_for(pilot, lambda: app.screen.query_one(StatusBar).ch_state == "online")
            state = await customer.escalate(mail_ref(raw))
            await wait_for(pilot, lambda: isinstance(app.screen, RingScreen), "the ring")
            await pilot.press("y")
            accepted = await customer.wait_state(state.call, ("accepted",))
            talk = await customer.join(accepted)
            main = app.main
            chat = app.chat
            assert main is not None
            assert chat is not None
            await wait_for(pilot, lambda: bool(main.query(ChatPane)), "chat pane")
            session = main.query_one(ChatPane).session
            await wait_for(pilot, lambda: len(chat.canned_replies(session)) == 2, "the brief")

            main.query_one(ChatPane).refresh_bindings()
            await wait_for(pilot, lambda: "Canned reply" in screen_text(app), "keys in footer")
            await pilot.press("f2")  # replies sorted by key: bye, hi
            said = await next_event(talk.events, Line, lambda ln: not ln.mine)
            assert said.text == "Hello! How can I help?"

            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, CannedScreen), "canned list")
            assert "1  bye: Thanks for asking!" in screen_text(app)
            await pilot.press("1")
            said = await next_event(talk.events, Line, lambda ln: not ln.mine)
            assert said.text == "Thanks for asking!"

            await wait_for(pilot, lambda: not isinstance(app.screen, CannedScreen), "list gone")
            await pilot.press("ctrl+y")  # chat.tag, remapped from ctrl+g in [ui].keys
            await wait_for(pilot, lambda: isinstance(app.screen, TagScreen), "tag box")
            await pilot.press(*"Trail running, rain jackets")
            await pilot.press("enter")

            async def tagged() -> bool:
                row = await store.member(member.name)
                return row is not None and {"trail running", "rain jackets"} <= set(row.interests)

            await poll(tagged)
            seg = await store.segment_member_ids(Segment(interests=("trail running",)))
            assert [email for _, email in seg] == [member.address]
            await wait_for(pilot, lambda: "Tagged" in screen_text(app), "tag confirmed")

            await pilot.press("escape")  # close the chat pane
            await wait_for(pilot, lambda: not main.query(ChatPane), "pane closed")
            await pilot.press("Q")
            await wait_for(pilot, lambda: isinstance(app.screen, OperatorScreen), "queue")
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, DialScreen), "dial box")
            await pilot.press(*"dan")
            await pilot.press("enter")  # the campaign is filled in from the last brief
            await wait_for(pilot, lambda: "dan is offline" in screen_text(app), "alarmed")
            assert await srv.server.extensions["alarms"].count("dan") == 1

            await pilot.press("d")  # an online member is rung; the chat opens on accept
            await wait_for(pilot, lambda: isinstance(app.screen, DialScreen), "dial box")
            await pilot.press(*member.name)
            await pilot.press("enter")
            ring = await customer.next_ring()
            assert ring.caller == operator.name
            await customer.answer(ring.call, True)
            await wait_for(pilot, lambda: bool(main.query(ChatPane)), "dialled chat opens")

            ids = {row.id for row in app.key_rows()}
            assert {"chat.canned", "chat.canned-1", "chat.tag", "queue.dial"} <= ids
    finally:
        stop.set()
        if bridge_task is not None:
            await bridge_task
        await mall.close()
        await store.close()
