"""bench/chat.py still runs (tiny sizes) and prints its JSON figures (never judged here)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chat.py"
KEYS = {
    "relay_msgs_per_s",
    "raw_relay_msgs_per_s",
    "relay_ratio",
    "latency_p50_us",
    "latency_p99_us",
    "raw_rtt_p50_us",
    "latency_p50_ratio",
    "ring_p99_ms",
    "open_p99_ms",
}


async def test_chat_bench_smoke() -> None:
    """The benchmark runs end to end and its last line is one JSON object with every figure."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--messages",
        "300",
        "--pings",
        "20",
        "--calls",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    figures = json.loads(out.decode().strip().splitlines()[-1])
    assert figures.keys() >= KEYS
