"""Chat benchmark: a real chat session against bare asyncio relays, in the same run.

    .venv/bin/python bench/chat.py [--messages 20000] [--pings 2000] [--calls 100]

Every relay runs in a process of its own and the two clients A and B in this one; the
relays are measured in interleaved rounds (the machine's load drifts). Figures (the last
line is one JSON object):

* relay_msgs_per_s: messages/s from A to B through a real relay-mode session (framing,
  checks, seq numbers, fan-out, SQLite commit per batch, one ``said_many`` per commit
  to A); the clients join with ``batch`` as chmail's client does, so B gets the
  messages that arrived together as ``chats`` frames. raw_relay_msgs_per_s: the same
  ``say`` frames through a bare asyncio relay that only cuts the byte stream into
  frames and forwards them, one frame per message to B; relay_ratio = the first / the
  second (goal >= 0.7). The clients decode every frame they get the same way (one
  ``msgpack.unpackb`` per frame) in both. For context: single_relay_msgs_per_s (the
  same session with clients that join without ``batch``: one ``chat`` frame per
  message, as B must decode in the raw relay), decode_relay_msgs_per_s (a relay that
  also decodes and re-encodes each message) and stream_relay_msgs_per_s (the
  asyncio-streams relay most people write first: readexactly + write per frame), with
  their ratios.
* session_cpu_us_per_msg / raw_relay_cpu_us_per_msg: CPU time the session's server
  process and the bare relay's process spent per message over the throughput rounds
  (from /proc; clock-tick resolution): what relaying costs the server, whatever the
  clients spend decoding.
* latency_p50_us / latency_p99_us: one message A -> session -> B, waiting for each;
  raw_rtt_p50_us: the same trip through the bare relay; latency_p50_ratio (goals:
  <= 2.5, p99 <= 5 ms).
* ring_p50/p99_ms: chat key (``call``) to the callee's ``ring``; open_p50/p99_ms:
  ``answer`` to both sides joined on the session (goal p99 <= 20 ms). These use a real
  ``chmail-server serve`` process and two ChLink clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chmail import migrate
from chmail import protocol as p
from chmail.chserver.chathub import SessionHub
from chmail.config import ServerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(values: list[float], q: float) -> float:
    """The nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    values = sorted(values)
    return values[max(0, min(len(values), math.ceil(q * len(values))) - 1)]


# ----------------------------------------------------------------------------- bare relay


class RawRelay(asyncio.Protocol):
    """Cuts the byte stream into frames and forwards them to the other peer. Nothing else."""

    peers: ClassVar[list[RawRelay]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = bytearray()
        RawRelay.peers.append(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        off, end = 0, len(buf)
        while end - off >= 4:
            (size,) = p.LENGTH.unpack_from(buf, off)
            if end - off - 4 < size:
                break
            off += 4 + size
        if off:
            out = bytes(buf[:off])
            del buf[:off]
            for o in RawRelay.peers:
                if o is not self:
                    o.transport.write(out)


class DecodeRelay(RawRelay):
    """Context baseline: also decodes each frame and re-encodes it with a sequence number
    (what any chat relay must do at least), still without checks, storage or acks."""

    seq: ClassVar[int] = 0

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        off, end, out = 0, len(buf), []
        while end - off >= 4:
            (size,) = p.LENGTH.unpack_from(buf, off)
            if end - off - 4 < size:
                break
            obj = msgpack.unpackb(buf[off + 4 : off + 4 + size], raw=False)
            DecodeRelay.seq += 1
            body = msgpack.packb(
                {"t": "say", "seq": DecodeRelay.seq, "cid": obj.get("cid"), "text": obj.get("text")}
            )
            out.append(p.LENGTH.pack(len(body)) + body)
            off += 4 + size
        del buf[:off]
        if out:
            joined = b"".join(out)
            for o in RawRelay.peers:
                if o is not self:
                    o.transport.write(joined)


class StreamRelay:
    """Context baseline: the relay most people would write first, with asyncio streams:
    read a frame (``readexactly``), write it to the other peer, no decoding at all."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(p.LENGTH.unpack(head)[0])
                for w in self.writers:
                    if w is not writer:
                        w.write(head + body)
                        await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


class Peer:
    """A bench client: counts frames of one type, with the same decoding cost both ways."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()

    async def frames(self) -> list[dict[str, Any]]:
        data = await self.reader.read(1 << 16)
        if not data:
            raise ConnectionError("closed")
        buf = self.buf
        buf += data
        off, end, out = 0, len(buf), []
        while end - off >= 4:
            (size,) = p.LENGTH.unpack_from(buf, off)
            if end - off - 4 < size:
                break
            out.append(msgpack.unpackb(buf[off + 4 : off + 4 + size], raw=False))
            off += 4 + size
        del buf[:off]
        return out


async def session_peer(port: int, sid: int, login: str, token: str, batch: bool) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(p.encode(p.Hello()))
    writer.write(p.encode(p.Join(id=1, session=sid, login=login, token=token, batch=batch)))
    peer = Peer(reader, writer)
    while True:
        if any(f["t"] == "joined" for f in await peer.frames()):
            return peer


async def raw_peer(port: int) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Peer(reader, writer)


def delivered(frame: dict[str, Any], kind: str) -> int:
    """How many messages a frame B got brings (``kind`` is the relay's single frame)."""
    if frame["t"] == "chats":
        return len(frame["cids"])
    return 1 if frame["t"] == kind else 0


def acks(frame: dict[str, Any]) -> int:
    """How many of our messages a frame acknowledges (``said`` or ``said_many``)."""
    if frame["t"] == "said_many":
        return len(frame["ids"])
    return 1 if frame["t"] == "said" else 0


async def throughput(a: Peer, b: Peer, n: int, kind: str, base: int) -> float:
    frames = [
        p.encode(p.Say(id=base + i, cid=f"c{base + i}", text=f"message {i}")) for i in range(n)
    ]

    async def drain_a() -> None:  # A's acks (session) are read and dropped
        with_acks = kind == "chat"
        got = 0
        while with_acks and got < n:
            got += sum(acks(f) for f in await a.frames())

    async def recv_b() -> None:
        got = 0
        while got < n:
            got += sum(delivered(f, kind) for f in await b.frames())

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(drain_a()), asyncio.create_task(recv_b())]
    for i in range(0, n, 256):
        a.writer.write(b"".join(frames[i : i + 256]))
        await a.writer.drain()
    await asyncio.gather(*tasks)
    return n / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ROUNDS = 5  # throughput rounds per relay; the best of each counts (the machine is shared)


async def latency(a: Peer, b: Peer, n: int, kind: str, base: int) -> list[float]:
    out = []
    for i in range(n):
        frame = p.encode(p.Say(id=base + i, cid=f"l{base + i}", text="ping"))
        t0 = time.perf_counter()
        a.writer.write(frame)
        while not any(delivered(f, kind) for f in await b.frames()):
            pass
        out.append((time.perf_counter() - t0) * 1e6)
        if kind == "chat":
            while not any(acks(f) for f in await a.frames()):
                pass
    return out


async def serve(kind: str) -> None:
    """Run one server (``raw`` relay or a chat ``session``) and print how to reach it."""
    loop = asyncio.get_running_loop()
    if kind == "streams":
        relay = StreamRelay()
        server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        return
    if kind in ("raw", "decode"):
        server = await loop.create_server(
            RawRelay if kind == "raw" else DecodeRelay, "127.0.0.1", 0
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chserver.sqlite"
        db = await migrate.connect(path, "chserver")
        hub = SessionHub(db, Path(tmp) / "chat.sqlite", b"k" * 32, ServerConfig(), "127.0.0.1")
        await hub.start()
        s = await hub.open(
            port=free_port(),
            lease=1,
            owner="alice",
            message_id="<b@x>",
            subject="bench",
            host="127.0.0.1",
        )
        ta, tb = await hub.admit(s, "alice"), await hub.admit(s, "bob")
        print(s.port, s.id, ta, tb, flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        await hub.close()
        await db.close()


async def start_server(kind: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "session" if kind == "single" else kind,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    return proc, line.decode().split()


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    await proc.wait()


async def relay_peers(kind: str) -> tuple[asyncio.subprocess.Process, Peer, Peer]:
    """A server of ``kind`` in its own process and the two clients A and B on it."""
    proc, info = await start_server(kind)
    if kind in ("session", "single"):
        port, sid, ta, tb = int(info[0]), int(info[1]), info[2], info[3]
        batch = kind == "session"
        return (
            proc,
            await session_peer(port, sid, "alice", ta, batch),
            await session_peer(port, sid, "bob", tb, batch),
        )
    a, b = await raw_peer(int(info[0])), await raw_peer(int(info[0]))
    b.writer.write(p.encode(p.Hello()))  # the relay forwards it: A reads it, B is known
    await a.frames()
    return proc, a, b


async def bench_sessions(messages: int, pings: int) -> dict[str, float]:
    """Every server runs in a process of its own, all at once, the clients in this one.

    The machine is shared and its load drifts, so the measurements are interleaved:
    each round measures every relay in turn, and the latency pings alternate between
    the session and the bare relay in small blocks. Throughput: the best round of each.
    """
    kinds = ("raw", "decode", "streams", "single", "session")
    servers = {k: await relay_peers(k) for k in kinds}
    tps: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, float] = dict.fromkeys(kinds, 0.0)  # server CPU seconds, all rounds
    for r in range(ROUNDS):
        for k in kinds:
            proc, a, b = servers[k]
            before = cpu_seconds(proc.pid)
            tps[k].append(
                await throughput(
                    a, b, messages, "chat" if k in ("session", "single") else "say", r * messages
                )
            )
            cpu[k] += cpu_seconds(proc.pid) - before
    lat: list[float] = []
    raw_lat: list[float] = []
    block = max(1, pings // 10)
    for i in range(0, pings, block):
        base = 10_000_000 + 2 * i
        _, a, b = servers["session"]
        await latency(a, b, 1, "chat", base + block)  # warm-up after the switch, not counted
        lat += await latency(a, b, block, "chat", base)
        _, a, b = servers["raw"]
        await latency(a, b, 1, "say", base + block)
        raw_lat += await latency(a, b, block, "say", base)
    for proc, a, b in servers.values():
        for x in (a, b):
            x.writer.close()
        await stop_server(proc)
    tp, raw_tp, one_tp = max(tps["session"]), max(tps["raw"]), max(tps["single"])
    dec_tp, str_tp = max(tps["decode"]), max(tps["streams"])
    raw_p50 = statistics.median(raw_lat)
    return {
        "relay_msgs_per_s": round(tp),
        "raw_relay_msgs_per_s": round(raw_tp),
        "relay_ratio": round(tp / raw_tp, 3),
        "single_relay_msgs_per_s": round(one_tp),
        "relay_ratio_single": round(one_tp / raw_tp, 3),
        "decode_relay_msgs_per_s": round(dec_tp),
        "relay_ratio_vs_decode": round(tp / dec_tp, 3),
        "stream_relay_msgs_per_s": round(str_tp),
        "relay_ratio_vs_streams": round(tp / str_tp, 3),
        "session_cpu_us_per_msg": round(cpu["session"] / (ROUNDS * messages) * 1e6, 2),
        "raw_relay_cpu_us_per_msg": round(cpu["raw"] / (ROUNDS * messages) * 1e6, 2),
        "latency_p50_us": round(statistics.median(lat), 1),
        "latency_p99_us": round(pct(lat, 0.99), 1),
        "raw_rtt_p50_us": round(raw_p50, 1),
        "raw_rtt_p99_us": round(pct(raw_lat, 0.99), 1),
        "latency_p50_ratio": round(statistics.median(lat) / raw_p50, 2),
    }


PASSWORD = "bench-password"
WARMUP_CALLS = 3


async def start_ch_server(tmp: Path) -> tuple[asyncio.subprocess.Process, int]:
    """A real ``chmail-server serve`` with users alice and bob; its control port."""
    from chmail.chserver.app import hasher_for
    from chmail.chserver.keys import ensure_data_dir
    from chmail.chserver.store import ServerStore

    data = ensure_data_dir(tmp / "server")
    store = await ServerStore.open(data)
    pw_hash = hasher_for(ServerConfig(argon2_time_cost=1, argon2_memory_kib=256)).hash(PASSWORD)
    for login in ("alice", "bob"):
        await store.add_user(login, pw_hash, [f"{login}@example.org"], int(time.time()))
    await store.close()
    low = 20000 + (os.getpid() % 200) * 50  # below the ephemeral range
    env = dict(os.environ)
    env.update(
        {
            "CHMAIL_SERVER_PUBLIC_HOST": "127.0.0.1",
            "CHMAIL_SERVER_PORTS": f"{low}-{low + 49}",
            "CHMAIL_SERVER_RINGS_PER_MINUTE_PER_CALLER": "1000000",
            "CHMAIL_SERVER_RINGS_PER_MINUTE_PER_CALLEE": "1000000",
            "CHMAIL_SERVER_ARGON2_TIME_COST": "1",
            "CHMAIL_SERVER_ARGON2_MEMORY_KIB": "256",
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chmail.chserver",
        "serve",
        "--data",
        str(data),
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            raise RuntimeError("chmail-server did not start")
        if line.startswith("listening on "):
            return proc, int(line.rsplit(":", 1)[1])


async def bench_calls(n: int) -> dict[str, float]:
    """Chat key -> ring at the callee; accept -> both sides joined. A real server process."""
    from chmail.client.chat import ChatEngine, RingEvent, mail_ref
    from chmail.client.chlink import ChLink

    with tempfile.TemporaryDirectory() as tmp:
        proc, port = await start_ch_server(Path(tmp))
        links = {
            who: ChLink("127.0.0.1", port, who, PASSWORD, advertised_host="bench.test")
            for who in ("alice", "bob")
        }
        for link in links.values():
            await link.start()
        alice = ChatEngine(links["alice"], "alice")
        bob = ChatEngine(links["bob"], "bob")
        mid = "<bench.1@example.org>"
        chat = await links["alice"].alloc_port(mid, ["bob@example.org"])
        mail = mail_ref([*chat.headers(), ("Message-ID", mid), ("Subject", "bench")])
        ring_ms: list[float] = []
        open_ms: list[float] = []
        for i in range(n + WARMUP_CALLS):
            if i == WARMUP_CALLS:  # the first calls pay one-time costs (imports, caches)
                ring_ms.clear()
                open_ms.clear()
            t0 = time.perf_counter()
            st = await bob.escalate(mail)
            while True:
                ev = await alice.events.get()
                if isinstance(ev, RingEvent) and ev.ring.call == st.call:
                    break
            ring_ms.append((time.perf_counter() - t0) * 1000)
            t1 = time.perf_counter()
            mine = await alice.answer(st.call)

            async def bob_side(call: int) -> Any:
                return await bob.join(await bob.wait_state(call))

            a, b = await asyncio.gather(alice.join(mine), bob_side(st.call))
            open_ms.append((time.perf_counter() - t1) * 1000)
            await a.end()
            await b.close()
            await bob.wait_state(st.call, ("ended",))
        await alice.close()
        await bob.close()
        for link in links.values():
            await link.close()
        proc.terminate()
        await proc.wait()
    return {
        "ring_p50_ms": round(statistics.median(ring_ms), 2),
        "ring_p99_ms": round(pct(ring_ms, 0.99), 2),
        "open_p50_ms": round(statistics.median(open_ms), 2),
        "open_p99_ms": round(pct(open_ms, 0.99), 2),
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument(
        "--serve", choices=["raw", "decode", "streams", "session"], help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.serve:
        await serve(args.serve)
        return {}
    result: dict[str, Any] = {}
    result.update(await bench_sessions(args.messages, args.pings))
    result.update(await bench_calls(args.calls))
    for k, v in result.items():
        print(f"{k:24} {v}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
