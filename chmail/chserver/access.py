"""Who may try to log in, and whose presence a login may learn. Pure, no I/O.

Rules:

* Failed logins are counted per address and per login (in memory; a restart forgets
  them). An address with ``IP_FAILURES`` failures within ``IP_WINDOW`` seconds gets
  ``rate_limited`` until the window has cleared. A login with ``LOGIN_FAILURES``
  failures within ``LOGIN_WINDOW`` seconds, from any addresses, is locked: its ``auth``
  gets ``rate_limited`` (password not checked) until the oldest of those failures is
  ``LOGIN_WINDOW`` old. Unknown logins are counted and locked alike, so a lock says
  nothing about whether a login exists. A successful login clears its own count.
* Presence (S113) is told only about related logins: the asker itself, a login holding
  a live lease whose recipients include one of the asker's addresses (it mailed the
  asker a chat link), and a login one of whose addresses is among the recipients of a
  live lease of the asker (the asker mailed it a chat link). Anyone else is reported
  offline, so presence cannot be used to find out who has an account.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

from chmail.chserver.ports import Lease

IP_FAILURES = 20  # failed logins from one address within IP_WINDOW ...
IP_WINDOW = 60.0  # ... after which that address gets rate_limited until the window clears
LOGIN_FAILURES = 10  # failed logins for one login within LOGIN_WINDOW ...
LOGIN_WINDOW = 900.0  # ... lock that login until the oldest of them is this old
# (the server takes both from [server] login_lockout_failures / login_lockout_minutes,
# whose defaults are these)
MAX_TRACKED = 10_000  # addresses (and logins) tracked before quiet ones are forgotten


class FailureWindow:
    """Failure times per key (an address or a login) within a sliding window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, collections.deque[float]] = {}

    def add(self, key: str, now: float | None = None) -> None:
        self._failures.setdefault(key, collections.deque()).append(
            time.monotonic() if now is None else now
        )
        if len(self._failures) > MAX_TRACKED:  # many keys: forget the quiet ones
            for other in list(self._failures):
                self.blocked_for(other)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def blocked_for(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        recent = self._failures.get(key)
        if recent is None:
            return 0.0
        now = time.monotonic() if now is None else now
        cutoff = now - self.window
        while recent and recent[0] < cutoff:
            recent.popleft()
        if not recent:
            del self._failures[key]
            return 0.0
        if len(recent) < self.limit:
            return 0.0
        return max(0.0, recent[-self.limit] + self.window - now)


def related(
    asker: str,
    asker_emails: Iterable[str],
    other: str,
    other_emails: Iterable[str],
    asker_leases: Iterable[Lease],
    other_leases: Iterable[Lease],
    now: int,
) -> bool:
    """May ``asker`` learn the presence of ``other``? (see the module rules)"""
    if asker == other:
        return True
    mine = set(asker_emails)
    if any(x.expires > now and not mine.isdisjoint(x.recipients) for x in other_leases):
        return True
    theirs = set(other_emails)
    return any(x.expires > now and not theirs.isdisjoint(x.recipients) for x in asker_leases)
