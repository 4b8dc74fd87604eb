"""Smoke test: bench/chserver_link.py still runs at a tiny size and prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chserver_link.py"


def test_bench_runs_small() -> None:
    """The benchmark's last line is one JSON object with the documented keys."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--clients", "20", "--allocs", "30", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    for key in (
        "idle_clients",
        "kib_per_client",
        "alloc_p50_us",
        "alloc_p99_us",
        "raw_rtt_p50_us",
        "alloc_ratio_p50",
        "alloc_vs_ch_ping_p50",
    ):
        assert key in result
    assert result["idle_clients"] == 20
