"""bench/campaign.py still runs (tiny size) and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "campaign.py"


def test_campaign_bench_smoke() -> None:
    """A 200-member run prints a JSON last line with the figures and no duplicates."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--members", "200", "--raw", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("members", "send_msgs_per_s", "raw_send_msgs_per_s", "send_ratio"):
        assert key in data
    assert data["members"] == 200
    assert data["sent"] == 200
    assert data["unique_message_ids"] == 200
    assert data["duplicates"] == 0
