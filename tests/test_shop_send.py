"""Campaign sending to a real aiosmtpd: all members once, retries, failures, consent."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from shop_publicity import campaigns
from shop_publicity.models import SENT, Outcome, Segment
from shop_publicity.ratelimit import ErrorGauge
from shop_publicity.sender import Sender
from shop_publicity.store_sending import StatusWriter
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


async def test_4xx_retried_and_5xx_failed_with_servers_words(tmp_path: Path) -> None:
    """Greylisting (451 at RCPT, 452 after DATA) is retried; 550 fails with its reply."""
    sink = Sink()
    sink.temp_fail["m1@example.com"] = 2
    sink.data_temp_fail["m2@example.com"] = 1
    sink.perm_fail.add("m3@example.com")
    server, port = await start_sink(sink)
    store = await seeded_store(tmp_path / "data", 20)
    try:
        cfg = shop_config(port)
        cid = await campaigns.create(store, cfg, name="g", subject="s", body="b", sku="A-100")
        res = await Sender(store, cfg, cid).run()
        assert res.status == "done"
        assert res.retried == 3
        assert sink.by_rcpt["m1@example.com"] == 1
        assert sink.by_rcpt["m2@example.com"] == 1
        assert "m3@example.com" not in sink.by_rcpt
        assert await store.failures(cid) == [("m3@example.com", "550 5.1.1 No such user here")]
        assert (await store.counts(cid))["sent"] == 19
    finally:
        await store.close()
        server.close()


async def test_error_threshold_pauses_then_resume_finishes(tmp_path: Path) -> None:
    """Past the error threshold the send pauses itself; resume mails the rest once."""
    sink = Sink()
    sink.perm_fail.update(f"m{i}@example.com" for i in range(5, 15))
    server, port = await start_sink(sink)
    store = await seeded_store(tmp_path / "data", 60)
    try:
        cfg = shop_config(port, error_threshold=0.2, error_min_sample=10, pool_size=1)
        cid = await campaigns.create(store, cfg, name="p", subject="s", body="b", sku="A-100")
        res = await Sender(store, cfg, cid).run()
        assert res.status == "paused"
        assert "paused itself" in res.reason
        assert "550 5.1.1" in res.reason
        assert (await store.counts(cid))["pending"] > 0
        sink.perm_fail.clear()
        again = await Sender(
            store, cfg.__class__(**{**cfg.__dict__, "error_threshold": 0.9}), cid
        ).run()
        assert again.status == "done"
        assert all(n == 1 for n in sink.by_rcpt.values())
        assert len(sink.by_rcpt) + (await store.counts(cid))["failed"] == 60
    finally:
        await store.close()
        server.close()


async def test_pause_from_outside_then_resume_mails_each_once(tmp_path: Path) -> None:
    """`campaign pause` stops a running send between two mails, leaving no row claimed
    ahead as uncertain; resume finishes it."""
    sink = Sink()
    server, port = await start_sink(sink)
    store = await seeded_store(tmp_path / "data", 200)
    try:
        cfg = shop_config(port, rate_per_second=50.0)
        cid = await campaigns.create(store, cfg, name="p", subject="s", body="b", sku="A-100")
        task = asyncio.create_task(Sender(store, cfg, cid).run())
        await sink.wait_total(20)
        await campaigns.pause(store, cid)
        res = await task
        assert res.status == "paused"
        assert res.reason == "paused by the admin"
        assert 20 <= sink.total < 200
        counts = await store.counts(cid)
        assert counts["sending"] == 0  # rows claimed ahead went back to pending
        assert counts["sent"] == sink.total
        again = await Sender(store, cfg, cid).run()
        assert again.status == "done"
        assert again.uncertain == 0
        assert len(sink.by_rcpt) == 200
        assert set(sink.by_rcpt.values()) == {1}
    finally:
        await store.close()
        server.close()


async def test_status_batch_waits_off_the_loop_when_the_db_is_locked(tmp_path: Path) -> None:
    """A status batch that meets another connection's write lock is applied once the
    lock goes (on the worker thread), not refused and not blocking the loop meanwhile."""
    store = await seeded_store(tmp_path / "data", 3)
    other = sqlite3.connect(tmp_path / "data" / "shop.sqlite3", isolation_level=None)
    try:
        cfg = shop_config(25)
        cid = await campaigns.create(store, cfg, name="l", subject="s", body="b", sku="A-100")
        rows = await store.segment_member_ids(Segment())
        await store.start_send(cid, [(mid, email, f"<{mid}@x>") for mid, email in rows])
        writer = StatusWriter(tmp_path / "data" / "shop.sqlite3")
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        mid = rows[0][0]
        task = asyncio.create_task(writer.apply([Outcome(cid, mid, SENT, 1.0, attempts_inc=1)]))
        await asyncio.wait([task], timeout=0.05)  # the loop runs; the batch still waits
        assert not task.done()
        other.execute("COMMIT")
        await task
        assert (await store.counts(cid))["sent"] == 1
        await writer.close()
    finally:
        other.close()
        await store.close()


def test_error_gauge_counts_failures_in_its_window() -> None:
    """The error gauge's running count equals the failures among its last results."""
    gauge = ErrorGauge(0.5, size=10, min_sample=5)
    pattern = [True, False, False, True, False] * 7
    for i, ok in enumerate(pattern):
        gauge.record(ok)
        assert gauge.errors == pattern[max(0, i - 9) : i + 1].count(False)
    assert gauge.tripped()  # 6 of the last 10 failed
