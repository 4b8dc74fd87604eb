"""Benchmark of the CH server's control link.

Measures, in one run:
* idle_clients / kib_per_client: authenticated idle connections held by one
  ``chmail-server serve`` subprocess (up to the fd limit), and the growth of its RSS per
  connection. Clients live in ``--client-procs`` helper processes.
* alloc_p50_us / alloc_p99_us: sequential ``alloc`` round trips on one connection,
  while the idle clients are held;
* raw_rtt_p50_us: a bare msgpack ping-pong over asyncio (a minimal echo server in its
  own subprocess, same framing, same client code);
* alloc_ratio_p50: alloc / raw. Both are measured in ``--rounds`` alternating rounds
  (``--allocs`` allocs, then as many bare pings); the ratio is the median of the
  per-round ratios of p50s (listed in alloc_ratio_rounds), alloc_p50_us and
  raw_rtt_p50_us are the p50s over all rounds (alloc_ratio_pooled is their ratio).

Cheap argon2 for the bench: users are hashed with time_cost=1, memory 64 KiB (settings
``argon2_time_cost``/``argon2_memory_kib``), otherwise 19,000 logins would take minutes
of hashing; connections log in as a handful of users. The server's heartbeat interval
is raised to 300 s so idle clients need not ping during the run.

    .venv/bin/python bench/chserver_link.py                 # full run (fd limit)
    .venv/bin/python bench/chserver_link.py --clients 200 --allocs 500   # quick
    .venv/bin/python bench/chserver_link.py --alloc-only                 # alloc figures

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chmail import protocol as p  # noqa: E402

USERS = 8
PASSWORD = "bench-password"


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CHMAIL_SERVER_ARGON2_TIME_COST="1",
        CHMAIL_SERVER_ARGON2_MEMORY_KIB="64",
        CHMAIL_SERVER_HEARTBEAT_INTERVAL="300",
        CHMAIL_SERVER_HEARTBEAT_TIMEOUT="900",
        PYTHONPATH=str(ROOT),
    )
    return env


# ----------------------------------------------------------------------------- clients


class RequestClient(asyncio.Protocol):
    """One connection; sequential requests by id (the same code for both servers)."""

    def __init__(self) -> None:
        self.decoder = p.FrameDecoder()
        self.waiting: asyncio.Future[dict[str, Any]] | None = None
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        for body in self.decoder.feed(data):
            obj = msgpack.unpackb(body, raw=False)
            if obj.get("t") == "ping":
                self.send({"t": "pong", "n": obj.get("n", 0)})
                continue
            is_reply = "id" in obj or obj.get("t") == "pong"
            if self.waiting is not None and not self.waiting.done() and is_reply:
                self.waiting.set_result(obj)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.transport is not None
        body = msgpack.packb(obj, use_bin_type=True)
        self.transport.write(p.LENGTH.pack(len(body)) + body)

    async def call(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.waiting = asyncio.get_running_loop().create_future()
        self.send(obj)
        return await self.waiting


async def timed(client: RequestClient, make: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        obj = make(i)
        t0 = time.perf_counter_ns()
        reply = await client.call(obj)
        out.append((time.perf_counter_ns() - t0) / 1000)
        if reply.get("t") == "error":
            raise SystemExit(f"bench: server error {reply}")
    return out


class IdleClient(asyncio.Protocol):
    def __init__(self, login: str, done: asyncio.Future[None]) -> None:
        self.conn = p.Connection(p.Role.CLIENT)
        self.login = login
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.conn.send(p.Hello(agent="bench")))
        transport.write(self.conn.send(p.Auth(id=1, login=self.login, password=PASSWORD)))

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for ev in self.conn.events():
            if isinstance(ev, p.AuthOk) and not self.done.done():
                self.done.set_result(None)
            elif isinstance(ev, p.Error) and not self.done.done():
                self.done.set_exception(RuntimeError(f"{ev.code}: {ev.message}"))
            elif isinstance(ev, p.Ping) and self.transport is not None:
                self.transport.write(self.conn.send(p.Pong(n=ev.n)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed"))


async def client_proc(host: str, port: int, count: int, offset: int) -> None:
    """Helper process: hold ``count`` authenticated idle connections until stdin closes."""
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(200)
    transports: list[asyncio.BaseTransport] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            done: asyncio.Future[None] = loop.create_future()
            login = f"bench{(offset + i) % USERS}"
            try:
                t, _ = await loop.create_connection(lambda: IdleClient(login, done), host, port)
                transports.append(t)
                await asyncio.wait_for(done, 60)
            except (OSError, RuntimeError, ConnectionError, TimeoutError):
                failures += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    print(f"READY {count - failures} {failures}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for t in transports:
        t.close()


# ----------------------------------------------------------------------------- echo server


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.decoder = p.FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for body in self.decoder.feed(data):
            obj = msgpack.unpackb(body, raw=False)
            out = msgpack.packb({"t": "pong", "id": obj.get("id"), "n": obj.get("n")})
            self.transport.write(p.LENGTH.pack(len(out)) + out)


async def echo_server() -> None:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# ----------------------------------------------------------------------------- main


def start(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=server_env()
    )
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: {args[2:4]} did not start")
        if line.startswith("listening on "):
            return proc, int(line.rsplit(":", 1)[1])


async def add_users(data: Path) -> None:
    """A handful of users with cheap argon2 hashes (the server's own store code)."""
    from chmail.chserver.auth import HashCost, Hasher
    from chmail.chserver.keys import ensure_data_dir
    from chmail.chserver.store import ServerStore

    store = await ServerStore.open(ensure_data_dir(data))
    hasher = Hasher(HashCost(time_cost=1, memory_kib=64))
    try:
        for i in range(USERS):
            await store.add_user(f"bench{i}", hasher.hash(PASSWORD), [f"bench{i}@bench"], 0)
    finally:
        await store.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_fd_limit()
    clients = 0 if args.alloc_only else args.clients or max(0, limit - 300)
    data = Path(tempfile.mkdtemp(prefix="chbench-"))
    py = sys.executable
    await add_users(data)
    server, port = start([py, "-m", "chmail.chserver", "serve", "--data", str(data),
                          "--listen", "127.0.0.1:0"])  # fmt: skip
    echo, echo_port = start([py, __file__, "--echo-server"])
    ps = psutil.Process(server.pid)
    loop = asyncio.get_running_loop()
    try:
        # One logged-in connection for the alloc timings (also warms the server up).
        _, ch = await loop.create_connection(RequestClient, "127.0.0.1", port)
        await ch.ready
        ch.send({"t": "hello", "version": p.PROTOCOL_VERSION})
        auth = await ch.call({"t": "auth", "id": 1, "login": "bench0", "password": PASSWORD})
        assert auth["t"] == "auth_ok", auth
        await timed(ch, lambda i: {"t": "ping", "id": i, "n": i}, 200)
        rss_before = ps.memory_info().rss

        t0 = time.perf_counter()
        helpers = []
        per = -(-clients // args.client_procs) if clients else 0
        for k in range(args.client_procs):
            n = min(per, clients - k * per)
            if n <= 0:
                continue
            helpers.append(
                subprocess.Popen(
                    [py, __file__, "--client-proc", str(port), str(n), str(k * per)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        held = failed = 0
        for h in helpers:
            assert h.stdout is not None
            line = await loop.run_in_executor(None, h.stdout.readline)
            _, ok, bad = line.split()
            held, failed = held + int(ok), failed + int(bad)
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the server finish writing table 1
        rss_after = ps.memory_info().rss
        kib = (rss_after - rss_before) / 1024 / held if held else 0.0
        print(f"idle clients held: {held} (failed {failed}) in {connect_s:.1f} s")
        mib = (rss_before / 2**20, rss_after / 2**20)
        print(f"server RSS {mib[0]:.1f} -> {mib[1]:.1f} MiB: {kib:.2f} KiB/client")

        _, raw = await loop.create_connection(RequestClient, "127.0.0.1", echo_port)
        await raw.ready
        await timed(raw, lambda i: {"t": "ping", "id": i, "n": i}, 300)
        await timed(ch, lambda i: {"t": "alloc", "id": i, "message_id": f"<w{i}@bench>",
                                   "recipients": ["x@example.org"]}, 300)  # fmt: skip
        rounds = []
        for r in range(args.rounds):  # alternate so both see the same machine state
            allocs = await timed(
                ch,
                lambda i, r=r: {"t": "alloc", "id": i + 1, "message_id": f"<a{r}.{i}@bench>",
                                "recipients": ["x@example.org"]},
                args.allocs,
            )  # fmt: skip
            raw_rtt = await timed(raw, lambda i: {"t": "ping", "id": i, "n": i}, args.allocs)
            ch_ping = await timed(ch, lambda i: {"t": "ping", "id": i, "n": i}, args.allocs)
            rounds.append((raw_rtt, allocs, ch_ping))
            print(
                f"round {r + 1}: alloc p50 {pct(allocs, 0.5):.1f} us, bare ping-pong p50 "
                f"{pct(raw_rtt, 0.5):.1f} us, ratio {pct(allocs, 0.5) / pct(raw_rtt, 0.5):.2f}"
            )
        # each round's ratio is taken between figures measured seconds apart; the
        # median of the rounds is what the goal is read against (load drifts between
        # rounds on a shared machine, which a pooled ratio would mix up)
        round_ratios = [round(pct(a, 0.5) / pct(b, 0.5), 2) for b, a, _ in rounds]
        raw_all = [x for r in rounds for x in r[0]]
        alloc_all = [x for r in rounds for x in r[1]]
        ping_all = [x for r in rounds for x in r[2]]
        for h in helpers:
            assert h.stdin is not None
            h.stdin.close()
        for h in helpers:
            h.wait(60)
    finally:
        for proc in (server, echo):
            proc.terminate()
            proc.wait(30)
    result = {
        "idle_clients": held,
        "idle_failed": failed,
        "fd_limit": limit,
        "kib_per_client": round(kib, 2),
        "connect_seconds": round(connect_s, 1),
        "alloc_p50_us": round(pct(alloc_all, 0.5), 1),
        "alloc_p99_us": round(pct(alloc_all, 0.99), 1),
        "raw_rtt_p50_us": round(pct(raw_all, 0.5), 1),
        "raw_rtt_p99_us": round(pct(raw_all, 0.99), 1),
        "ch_ping_p50_us": round(pct(ping_all, 0.5), 1),
        # median over the rounds of (alloc p50 / bare ping-pong p50) within a round
        "alloc_ratio_p50": round(statistics.median(round_ratios), 2),
        "alloc_ratio_rounds": round_ratios,
        "alloc_ratio_pooled": round(pct(alloc_all, 0.5) / pct(raw_all, 0.5), 2),
        # alloc beside a ping over the same CH connection: the alloc's own cost, less
        # sensitive than the ratio to how the separate echo process gets scheduled
        "alloc_vs_ch_ping_p50": round(pct(alloc_all, 0.5) / pct(ping_all, 0.5), 2),
        "allocs": len(alloc_all),
        "alloc_mean_us": round(statistics.fmean(alloc_all), 1),
    }
    print(
        f"alloc p50 {result['alloc_p50_us']} us p99 {result['alloc_p99_us']} us; bare msgpack "
        f"ping-pong p50 {result['raw_rtt_p50_us']} us; ratio {result['alloc_ratio_p50']}"
    )
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client-proc":
        port, count, offset = (int(x) for x in sys.argv[2:5])
        asyncio.run(client_proc("127.0.0.1", port, count, offset))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--echo-server":
        asyncio.run(echo_server())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=0, help="idle clients (0: fd limit - 300)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--allocs", type=int, default=2000, help="allocs per round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds of allocs and bare pings"
    )
    parser.add_argument(
        "--alloc-only", action="store_true", help="skip the idle clients (alloc figures only)"
    )
    result = asyncio.run(main_async(parser.parse_args()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
