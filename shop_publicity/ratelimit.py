"""Send pacing: messages per second, messages per window, backoff, and the error gauge.

* Per second: evenly spaced slots (a token bucket with a burst of one second's worth),
  shared by every pooled connection, so N connections never add up to N times the rate.
* Per window: at most ``window_max`` mails in any ``window_seconds`` (e.g. a provider's
  hourly quota). Mails sent before a restart count: the sender seeds the window from the
  status table.
* Backoff for retryable failures: exponential with full jitter, capped.
* The error gauge: the share of failures (temporary or permanent) among the last
  ``size`` attempts; past the threshold the send pauses itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Iterable


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        window_max: int = 0,
        window_seconds: float = 3600.0,
        earlier: Iterable[float] = (),
    ) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.burst = max(1.0, per_second)
        self.window_max = window_max
        self.window_seconds = window_seconds
        self.window: deque[float] = deque(sorted(earlier))
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for the next send slot."""
        async with self._lock:
            now = time.monotonic()
            if self.interval:
                # Allow at most one second's burst after an idle spell.
                self._next = max(self._next, now - self.interval * (self.burst - 1))
                wait = self._next - now
                self._next += self.interval
                if wait > 0:
                    await asyncio.sleep(wait)
            if self.window_max > 0:
                wall = time.time()
                while self.window and self.window[0] <= wall - self.window_seconds:
                    self.window.popleft()
                if len(self.window) >= self.window_max:
                    await asyncio.sleep(self.window[0] + self.window_seconds - wall)
                    self.window.popleft()
                self.window.append(time.time())


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
    return random.uniform(base / 2, min(cap, base * 2 ** max(0, attempt - 1)))


class ErrorGauge:
    """Share of failed attempts among the last ``size`` (a running count: the sender
    asks after every mail)."""

    def __init__(self, threshold: float, size: int = 100, min_sample: int = 20) -> None:
        self.threshold = threshold
        self.min_sample = min_sample
        self.results: deque[bool] = deque(maxlen=size)
        self.errors = 0

    def record(self, ok: bool) -> None:
        results = self.results
        if len(results) == results.maxlen and not results[0]:
            self.errors -= 1  # the oldest result, a failure, falls out of the window
        results.append(ok)
        if not ok:
            self.errors += 1

    def tripped(self) -> bool:
        n = len(self.results)
        return 0 < self.threshold < 1 and n >= self.min_sample and self.errors / n > self.threshold
