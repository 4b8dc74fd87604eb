"""Campaign sending to a real aiosmtpd: all members once, retries, failures, consent."""

from __future__ import annotations

from pathlib import Path

from shop_publicity import campaigns
from shop_publicity.sender import Sender
from tests.shop_support import Sink, seeded_store, shop_config, start_sink

SUBJECT = "{{ product.title }} for {{ member.first_name }}"
BODY = (
    "Hello {{ member.name }},\n\n{{ product.title }} at {{ product.price }}.\n"
    "{{ unsubscribe_url }}\n"
)


async def test_send_thousand_members_each_once(tmp_path: Path) -> None:
    """1,000 members are each mailed exactly one message with their own Message-ID."""
    sink = Sink()
    server, port = await start_sink(sink)
    store = await seeded_store(tmp_path / "data", 1000)
    try:
        cfg = shop_config(port)
        cid = await campaigns.create(
            store, cfg, name="spring", subject=SUBJECT, body=BODY, sku="A-100"
        )
        res = await Sender(store, cfg, cid).run()
        assert res.status == "done"
        assert res.sent == 1000
        assert len(sink.by_rcpt) == 1000
        assert set(sink.by_rcpt.values()) == {1}
        assert len(sink.by_msgid) == 1000
        assert (await store.counts(cid))["sent"] == 1000
    finally:
        await store.close()
        server.close()
