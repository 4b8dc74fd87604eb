"""The send progress bar: one redrawn line on a terminal, a line per 10% otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from shop_publicity.sender import SendResult


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.last_draw = 0.0
        self.last_decile = -1

    def __call__(self, r: SendResult, final: bool = False) -> None:
        total = max(r.total, 1)
        frac = min(1.0, r.done / total)
        if self.tty:
            now = time.monotonic()
            if not final and now - self.last_draw < 0.1:
                return
            self.last_draw = now
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {self.line(r)}")
            if final:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self.last_decile and not final:
                return
            self.last_decile = decile
            self.stream.write(self.line(r) + "\n")
        self.stream.flush()

    @staticmethod
    def line(r: SendResult) -> str:
        return (
            f"{r.done}/{r.total}: {r.sent} sent, {r.failed} failed, {r.skipped} skipped"
            f" ({r.rate:.0f}/s)"
        )
