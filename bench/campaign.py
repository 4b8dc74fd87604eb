"""Benchmark: campaign send rate vs bare pooled aiosmtplib, to a local aiosmtpd.

    .venv/bin/python bench/campaign.py [--members 100000] [--raw 20000] [--pool 4]

1. Starts an aiosmtpd sink in a child process (so the sender has its own core) that
   counts accepted mails by Message-ID.
2. raw: sends ``--raw`` mails of the campaign's size over ``--pool`` aiosmtplib
   connections, nothing else (no rendering, no database): the ceiling.
3. campaign: imports ``--members`` members from CSV, creates a campaign, and sends it
   end to end through chmail-shop's sender (per-recipient rendering, per-recipient
   status rows committed before DATA and after the reply, events for the board).
4. Checks every member got exactly one Message-ID, then prints figures and, last, one
   JSON line: members, send_msgs_per_s, raw_send_msgs_per_s, send_ratio, ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_MSGID = re.compile(rb"^Message-ID: (<[^>\r\n]+>)", re.MULTILINE | re.IGNORECASE)


# ------------------------------------------------------------------ the sink (child process)


class _Handler:
    def __init__(self) -> None:
        self.ids: Counter[bytes] = Counter()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        content: bytes = envelope.original_content or b""  # type: ignore[attr-defined]
        m = _MSGID.search(content)
        self.ids[m.group(1) if m else b"?"] += 1
        return "250 OK"


async def _sink_main() -> None:
    from aiosmtpd.smtp import SMTP

    handler = _Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink", loop=loop), "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    # Any line on stdin: report counts; EOF: exit.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        dup = sum(1 for n in handler.ids.values() if n > 1)
        total = sum(handler.ids.values())
        print(json.dumps({"total": total, "unique": len(handler.ids), "dup": dup}), flush=True)
        if line.strip() == b"reset":
            handler.ids.clear()
    server.close()


class SinkProc:
    async def start(self) -> int:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--sink",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        return int((await self.proc.stdout.readline()).decode())

    async def counts(self, reset: bool = False) -> dict[str, int]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"reset\n" if reset else b"count\n")
        await self.proc.stdin.drain()
        data: dict[str, int] = json.loads(await self.proc.stdout.readline())
        return data

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


# ------------------------------------------------------------------ the two senders


async def raw_send(port: int, n: int, pool: int, template: bytes, tag: int = 0) -> float:
    import aiosmtplib

    per = [n // pool + (1 if i < n % pool else 0) for i in range(pool)]

    async def worker(w: int, count: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.test")
        await smtp.connect()
        for i in range(count):
            msg = template.replace(b"<RAWID>", f"<raw.{tag}.{w}.{i}@bench.test>".encode())
            await smtp.mail("mall@bench.test")
            await smtp.rcpt(f"r{w}.{i}@example.com")
            await smtp.data(msg)
        await smtp.quit()

    t = time.perf_counter()
    await asyncio.gather(*(worker(w, c) for w, c in enumerate(per)))
    return n / (time.perf_counter() - t)


async def bench(args: argparse.Namespace) -> dict[str, object]:
    from chmail.config import ShopConfig
    from shop_publicity import campaigns, members, products
    from shop_publicity.sender import Sender, SendResult
    from shop_publicity.store import Store

    sink = SinkProc()
    port = await sink.start()
    tmp = Path(tempfile.mkdtemp(prefix="chmail-bench-"))
    cfg = ShopConfig(
        smtp_host="127.0.0.1",
        smtp_port=port,
        from_addr="mall@bench.test",
        rate_per_second=0.0,
        pool_size=args.pool,
        unsubscribe_base_url="https://shop.bench.test",
    )
    try:
        csv_path = tmp / "members.csv"
        rows = ["email,name,interests,age_band"] + [
            f"member{i}@example.com,Member Number {i},shoes;running,30-39"
            for i in range(args.members)
        ]
        csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        store = await Store.open(tmp / "data")
        t = time.perf_counter()
        rep = await members.import_csv(store, csv_path)
        import_s = time.perf_counter() - t
        await products.add(
            store,
            products.check_product(
                "A-100",
                "Trail shoe",
                "Light, grippy, and made for mud.",
                "89.00",
                "https://shop.bench.test/a100.jpg",
                "https://shop.bench.test/a100",
            ),
        )
        cid = await campaigns.create(
            store,
            cfg,
            name="bench",
            sku="A-100",
            subject="{{ product.title }} for {{ member.first_name }}",
            body=(
                "Hello {{ member.name }},\n\nOur {{ product.title }} ({{ product.price }})"
                " is back.\n{{ product.description }}\nSee {{ product.landing_url }}\n\n"
                "Press c in chmail to chat with us.\nUnsubscribe: {{ unsubscribe_url }}\n"
            ),
        )
        sample = await campaigns.preview(store, cfg, cid, "1")
        template = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <RAWID>", sample.raw)
        raw_n = min(args.raw, args.members) if args.raw else args.members
        # Interleaved slices: raw, campaign, raw, campaign, ... so both see the same
        # machine load (this box is shared; a single before/after pair is noisy).
        slices = max(1, args.slices)
        raw_msgs = raw_s = 0.0
        send_s = 0.0
        raw_cpu = send_cpu = 0.0  # this process's CPU seconds (all threads)
        res = None
        await sink.counts(reset=True)
        for k in range(slices):
            n = raw_n // slices + (1 if k < raw_n % slices else 0)
            t, c = time.perf_counter(), time.process_time()
            await raw_send(port, n, args.pool, template, tag=k)
            raw_s += time.perf_counter() - t
            raw_cpu += time.process_time() - c
            raw_msgs += n
            target = args.members * (k + 1) // slices
            sender = Sender(store, cfg, cid)

            def stop_at(r: SendResult, s: Sender = sender, target: int = target) -> None:
                if r.sent >= target and not s.stop_reason:
                    s.stop_reason = "bench slice"

            sender.progress = stop_at
            t, c = time.perf_counter(), time.process_time()
            res = await sender.run()
            send_s += time.perf_counter() - t
            send_cpu += time.process_time() - c
        assert res is not None
        counts = await sink.counts()
        raw_rate = raw_msgs / raw_s if raw_s else 0.0
        campaign_counts = {
            "total": counts["total"] - int(raw_msgs),
            "unique": counts["unique"] - int(raw_msgs),
            "dup": counts["dup"],
        }
        counts = campaign_counts
        status = await store.counts(cid)
        await store.close()
    finally:
        await sink.stop()
    send_rate = status["sent"] / send_s if send_s else 0.0
    return {
        "members": args.members,
        "imported": rep.added,
        "import_s": round(import_s, 2),
        "pool": args.pool,
        "raw_msgs": raw_n,
        "raw_send_msgs_per_s": round(raw_rate, 1),
        "slices": slices,
        "send_msgs_per_s": round(send_rate, 1),
        "send_ratio": round(send_rate / raw_rate, 3) if raw_rate else 0.0,
        "send_s": round(send_s, 2),
        # CPU per mail in the sending process: steadier than wall rates on a busy box.
        "raw_cpu_us_per_msg": round(1e6 * raw_cpu / raw_msgs, 1) if raw_msgs else 0.0,
        "send_cpu_us_per_msg": round(1e6 * send_cpu / status["sent"], 1) if status["sent"] else 0.0,
        "sent": status["sent"],
        "failed": status["failed"],
        "delivered": counts["total"],
        "unique_message_ids": counts["unique"],
        "duplicates": counts["dup"],
        "mail_bytes": len(sample.raw),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=100_000)
    p.add_argument("--raw", type=int, default=20_000, help="mails in the raw run (0: members)")
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--slices", type=int, default=10, help="raw/campaign alternations")
    p.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sink:
        asyncio.run(_sink_main())
        return
    out = asyncio.run(bench(args))
    print(f"members {out['members']} imported in {out['import_s']} s")
    print(f"raw aiosmtplib ({out['pool']} conns): {out['raw_send_msgs_per_s']} msg/s")
    print(
        f"campaign send: {out['send_msgs_per_s']} msg/s ({out['send_s']} s), "
        f"ratio {out['send_ratio']}"
    )
    print(
        f"delivered {out['delivered']}, unique Message-IDs {out['unique_message_ids']}, "
        f"duplicates {out['duplicates']}"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
