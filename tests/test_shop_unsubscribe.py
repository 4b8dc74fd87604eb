"""The unsubscribe link: GET asks, One-Click POST records, no further mail; the board."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shop_publicity import board, campaigns
from shop_publicity.sender import Sender
from shop_publicity.unsubscribe import UnsubscribeServer
from tests.shop_support import Sink, seeded_store, shop_config, start_sink


async def http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: shop\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data.decode("utf-8", "replace")


async def test_unsubscribe_link_stops_further_mail(tmp_path: Path) -> None:
    """A member who posts One-Click to their link gets no later campaign; others' links
    cannot be forged; GET alone changes nothing."""
    sink = Sink(keep=True)
    server, port = await start_sink(sink)
    store = await seeded_store(tmp_path / "data", 10)
    unsub = UnsubscribeServer(store, await campaigns.shop_key(store))
    _, uport = await unsub.start("127.0.0.1:0")
    try:
        cfg = shop_config(port, unsubscribe_base_url=f"http://127.0.0.1:{uport}")
        first = await campaigns.create(store, cfg, name="a", subject="s", body="b", sku="A-100")
        await Sender(store, cfg, first).run()
        mail = next(m for m in sink.messages if m["To"].addresses[0].addr_spec == "m0@example.com")
        url = str(mail["List-Unsubscribe"]).strip("<>")
        path = url.removeprefix(f"http://127.0.0.1:{uport}")
        status, page = await http(uport, "GET", path)
        assert status == 200
        assert "List-Unsubscribe" in page  # the confirm form
        m0 = await store.member("m0@example.com")
        assert m0 is not None
        assert m0.unsubscribed_at is None
        parts = path.split("/")  # ['', 'u', campaign, member, token]
        forged = "/".join([*parts[:3], str(int(parts[3]) + 1), parts[4]])
        assert (await http(uport, "POST", forged, b"List-Unsubscribe=One-Click"))[0] == 403
        status, _ = await http(uport, "POST", path, b"List-Unsubscribe=One-Click")
        assert status == 200
        assert (await http(uport, "POST", path, b"List-Unsubscribe=One-Click"))[0] == 200
        second = await campaigns.create(store, cfg, name="b", subject="s", body="b", sku="A-100")
        await Sender(store, cfg, second).run()
        assert sink.by_rcpt["m0@example.com"] == 1  # only the first campaign
        assert sink.by_rcpt["m1@example.com"] == 2
        m1 = await store.member("m1@example.com")
        assert m1 is not None
        assert m1.unsubscribed_at is None
        b = board.Board()
        await b.catch_up(store)
        assert b.figures(first)["unsubscribed"] == 1
        assert b.figures(first)["sent"] == 10
        assert b.figures(second)["sent"] == 9
    finally:
        await unsub.close()
        await store.close()
        server.close()


async def test_board_numbers_equal_the_events(tmp_path: Path) -> None:
    """The board's figures are exactly what happened: sends, a failure, an unsubscribe,
    chats asked and answered, one still waiting, and the median wait."""
    sink = Sink()
    sink.perm_fail.add("m4@example.com")
    server, port = await start_sink(sink)
    store = await seeded_store(tmp_path / "data", 8)
    try:
        cfg = shop_config(port)
        cid = await campaigns.create(store, cfg, name="a", subject="s", body="b", sku="A-100")
        await Sender(store, cfg, cid).run()
        live = board.Board()
        seen: list[dict[str, object]] = []
        stop = asyncio.Event()
        follower = asyncio.create_task(
            board.follow(store, live, lambda bd: seen.append(bd.figures(cid)), stop, cid, 0.01)
        )
        await store.unsubscribe(cid, 2)
        t0 = 1000.0
        chats = [await store.chat_asked(cid, mid, f"m{mid}", t0) for mid in (1, 3, 5)]
        await store.chat_answered(chats[0], "olga", t0 + 4)
        await store.chat_answered(chats[1], "piet", t0 + 10)
        want = {
            "campaign": cid,
            "sent": 7,
            "failed": 1,
            "unsubscribed": 1,
            "chats_asked": 3,
            "chats_answered": 2,
            "waiting_now": 1,
            "median_answer_s": 7.0,
            "response_rate": round(3 / 7, 4),
        }

        async def settled() -> None:
            while not seen or seen[-1] != want:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), 10)
        stop.set()
        await follower
    finally:
        await store.close()
        server.close()
