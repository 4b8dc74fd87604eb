"""bench/imap_sync.py still runs (tiny sizes) and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imap_sync_bench_runs() -> None:
    """The benchmark runs end to end with small sizes and prints every promised figure."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "imap_sync.py"), "--messages", "300",
         "--search-messages", "2000", "--runs", "1"],
        capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("messages", "sync_msgs_per_s", "raw_fetch_msgs_per_s", "sync_ratio",
                "search_selective_p50_ms", "search_common_p50_ms"):  # fmt: skip
        assert key in result, key
    assert result["messages"] == 300
