"""Benchmark: IMAP header sync into the cache vs a bare FETCH, and FTS search latency.

    .venv/bin/python bench/imap_sync.py [--messages 10000] [--search-messages 100000]

1. Starts its own Dovecot, seeds ``--messages`` mails with MULTIAPPEND.
2. The floor: the same ``UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS ...])``
   over a plain asyncio socket, reading lines and literals and nothing else.
3. chmail: Syncer.sync_folder("INBOX") into an empty cache: SELECT, UID SEARCH, one
   streamed FETCH (cut into messages as it arrives, chmail/client/backends/imap_protocol.py,
   and parsed in the program's helper process, parse_worker.py, which the first sync
   starts: that one is timed apart as ``sync_cold_s``; ``sync_inprocess_*`` parse in the
   event loop's process instead),
   batches staged in memory and moved into SQLite while the next is parsed
   (chmail/client/cache_stage.py): rows, date index, folder counts -> ``sync_msgs_per_s``
   (the folder is listable newest first); then until the pass after the store is also
   done (threads, sort keys, address book, FTS) -> ``sync_indexed_msgs_per_s``. Best of
   five runs each, alternating with the bare FETCH, after a warm-up.
4. Search: ``--search-messages`` synthetic messages in a cache; p50 of a selective query
   (a rare name) and of a common word (in about half the mails), newest 50 hits each.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chmail.client.backends.imap import SYNC_ITEMS, ImapBackend
from chmail.client.cache import Cache, NewMessage
from chmail.client.sync import Syncer
from chmail.devmail.dovecot import Dovecot
from chmail.devmail.seed import seed_imap

FIRST = ["Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "김민수", "이지은", "田中", "佐藤"]
LAST = ["Stone", "Diaz", "Kim", "Lee", "Tanaka", "Sato", "Nguyen", "Smith", "Garcia", "Brown"]
WORDS = [
    "report",
    "budget",
    "meeting",
    "lunch",
    "invoice",
    "project",
    "review",
    "release",
    "design",
    "customer",
    "schedule",
    "feedback",
    "plan",
    "notes",
    "travel",
    "photos",
    "contract",
    "weekly",
    "digest",
    "update",
]


def synthetic(n: int, seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        if not name.isascii():
            import base64

            name = f"=?utf-8?b?{base64.b64encode(name.encode()).decode()}?="
        subject = " ".join(rng.choices(WORDS, k=rng.randint(2, 6))).capitalize()
        refs = f"References: <b{i - 1}@bench.example>\r\n" if i % 4 == 1 else ""
        out.append(
            (f"From: {name} <{first.lower()}.{i % 97}@example.org>\r\n"
             f"To: Alice <alice@example.org>\r\nSubject: {subject} #{i}\r\n"
             f"Date: Sun, 01 Nov 2026 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000"
             "\r\n"
             f"Message-ID: <b{i}@bench.example>\r\n{refs}MIME-Version: 1.0\r\n"
             f"Content-Type: text/plain; charset=utf-8\r\n\r\nbody {i}\r\n").encode()
        )  # fmt: skip
    return out


async def raw_fetch(port: int) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    await reader.readline()
    writer.write(b"a1 LOGIN alice alicepw\r\na2 SELECT INBOX\r\n")
    while not (await reader.readline()).startswith(b"a2 "):
        pass
    t = time.perf_counter()
    writer.write(b"a3 UID FETCH 1:* " + SYNC_ITEMS.encode() + b"\r\n")
    n = 0
    while True:
        line = await reader.readline()
        if line.startswith(b"a3 "):
            break
        if line.endswith(b"}\r\n"):
            await reader.readexactly(int(line[line.rindex(b"{") + 1 : -3]))
            n += 1
    dt = time.perf_counter() - t
    writer.close()
    return n, dt


async def chmail_sync(port: int, path: Path, helper: bool = True) -> tuple[int, float, float]:
    """Returns (messages, seconds until the folder is stored and listable, seconds until
    the search index also holds them). ``helper``: parse in the helper process."""
    cache = await Cache.open(path)
    backend = ImapBackend("bench", host="127.0.0.1", port=port, user="alice",
                          password="alicepw", security="plain", timeout=60,
                          parse_worker=helper)  # fmt: skip
    await backend.connect()
    await cache.upsert_folder("bench", "INBOX", special_use="inbox")
    syncer = Syncer(cache, backend, "bench")
    t = time.perf_counter()
    res = await syncer.sync_folder("INBOX")
    stored = time.perf_counter() - t
    await cache.index_pending()  # the background indexing sync_folder started
    indexed = time.perf_counter() - t
    folder = await cache.folder_by_name("bench", "INBOX")
    assert folder is not None
    assert folder.total == res.new
    await backend.close()
    await cache.close()
    return res.new, stored, indexed


async def aioimaplib_fetch(port: int) -> float:
    """The same FETCH through chmail's fixed aioimaplib reader, without parsing or storing."""
    backend = ImapBackend("bench", host="127.0.0.1", port=port, user="alice",
                          password="alicepw", security="plain", timeout=60)  # fmt: skip
    await backend.connect()
    await backend.state("INBOX")
    proto = backend._proto()
    t = time.perf_counter()
    await backend._cmd(proto.fetch, "1:*", SYNC_ITEMS, by_uid=True)
    dt = time.perf_counter() - t
    await backend.close()
    return dt


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def search_bench(path: Path, n: int) -> dict[str, float]:
    rng = random.Random(5)
    cache = await Cache.open(path)
    f = await cache.upsert_folder("s", "INBOX")
    t = time.perf_counter()
    batch: list[NewMessage] = []
    for i in range(n):
        first = rng.choice(FIRST)
        words = rng.choices(WORDS, k=5)
        if rng.random() < 0.5:
            words.append("update")
        batch.append(NewMessage(
            uid=i + 1, message_id=f"<s{i}@x>", from_name=f"{first} {rng.choice(LAST)}",
            from_addr=f"{first.lower()}{i % 500}@example.org", to="alice@example.org",
            subject=" ".join(words) + (" zyxwrare" if i % 10_000 == 7 else ""), date=i,
        ))  # fmt: skip
        if len(batch) == 5000:
            await cache.add_messages(f.id, batch)
            batch = []
    if batch:
        await cache.add_messages(f.id, batch)
    await cache.index_pending()
    fill = time.perf_counter() - t
    out: dict[str, float] = {"search_fill_s": round(fill, 2)}
    for label, queries in (
        ("selective", ["zyxwrare", "from:grace zyxwrare", "s4999@", "zyxw"]),
        ("common", ["update", "report", "meeting update", "from:bob"]),
    ):
        times = []
        for _ in range(15):
            for q in queries:
                t = time.perf_counter()
                hits = await cache.search(q, 50)
                times.append(time.perf_counter() - t)
                assert hits or label == "selective"
        out[f"search_{label}_p50_ms"] = round(p50(times), 2)
    await cache.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--search-messages", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    dv = Dovecot(users={"alice": "alicepw"})
    dv.start()
    tmp = Path(tempfile.mkdtemp(prefix="chmail-bench-"))
    try:
        t = time.perf_counter()
        await seed_imap("127.0.0.1", dv.imap_port, "alice", "alicepw", synthetic(args.messages))
        print(f"seeded {args.messages} messages in {time.perf_counter() - t:.2f} s", flush=True)
        await raw_fetch(dv.imap_port)  # warm Dovecot's caches
        # The first sync starts the program's parse helper (a client starts it once, at
        # its first big sync): timed apart, as the cold figure.
        _, cold, _ = await chmail_sync(dv.imap_port, tmp / "cold.sqlite3")
        print(f"first sync, starting the parse helper: {cold:.3f} s", flush=True)
        raws, syncs, indexed, aio, inproc = [], [], [], [], []
        for run in range(args.runs):
            n, dt = await raw_fetch(dv.imap_port)
            assert n == args.messages, n
            raws.append(dt)
            aio.append(await aioimaplib_fetch(dv.imap_port))
            n, dt, dti = await chmail_sync(dv.imap_port, tmp / f"sync{run}.sqlite3")
            assert n == args.messages, n
            syncs.append(dt)
            indexed.append(dti)
            _, dtp, _ = await chmail_sync(dv.imap_port, tmp / f"inproc{run}.sqlite3", False)
            inproc.append(dtp)
            print(f"run {run}: bare FETCH {raws[-1]:.3f} s, chmail sync {dt:.3f} s"
                  f" (parsing in-process: {dtp:.3f} s)", flush=True)  # fmt: skip
        raw_rate = args.messages / min(raws)
        sync_rate = args.messages / min(syncs)
        indexed_rate = args.messages / min(indexed)
        aio_rate = args.messages / min(aio)
        print(f"bare FETCH  {raw_rate:,.0f} msg/s (best of {args.runs})")
        print(f"same FETCH through the fixed aioimaplib reader {aio_rate:,.0f} msg/s")
        print(f"chmail sync {sync_rate:,.0f} msg/s (fetch + parse + store: folder listable)")
        print(f"  + search index {indexed_rate:,.0f} msg/s (until searchable)")
        inproc_rate = args.messages / min(inproc)
        print(f"  parsing in-process instead of the helper: {inproc_rate:,.0f} msg/s")
        search = await search_bench(tmp / "search.sqlite3", args.search_messages)
        print(f"search over {args.search_messages:,}: {search}")
        result = {
            "messages": args.messages,
            "sync_msgs_per_s": round(sync_rate),
            "raw_fetch_msgs_per_s": round(raw_rate),
            "sync_ratio": round(sync_rate / raw_rate, 3),
            "sync_s": round(min(syncs), 3),
            "aioimaplib_fetch_msgs_per_s": round(aio_rate),
            "sync_indexed_msgs_per_s": round(indexed_rate),
            "sync_indexed_ratio": round(indexed_rate / raw_rate, 3),
            "raw_fetch_s": round(min(raws), 3),
            "sync_cold_s": round(cold, 3),
            "sync_inprocess_msgs_per_s": round(inproc_rate),
            "sync_inprocess_ratio": round(inproc_rate / raw_rate, 3),
            "search_messages": args.search_messages,
            **search,
        }
        print(json.dumps(result))
    finally:
        dv.cleanup()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
