"""Table 2 in memory: the pool of chat ports and their leases (S103). Pure, no I/O.

Rules:

* A lease binds one port of the pool to one login for one mail (its Message-ID), its
  recipients and an optional campaign context, until ``expires`` (default 30 days).
* A reply in the same thread reuses the thread's live lease: when one of the ``thread``
  Message-IDs belongs to a live lease of the same login, host and context, that lease
  gets the new Message-ID and recipients too and its expiry is pushed out.
* Otherwise a port never leased is taken (lowest first); when none is left, the lease
  least recently used (expired ones first, since they are the oldest) is recycled with a
  new lease number, so the old mails' links fail as "recycled" instead of ringing the
  new holder.
* Lease numbers are global and only grow (see ``next_lease``); the store reserves them in
  blocks so that numbering survives a crash.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from chmail.headers import LeaseRecord

LEASE_BLOCK = 1024  # lease numbers reserved on disk at a time
MAX_MESSAGE_IDS = 100_000  # per lease; a thread longer than this starts a new lease


class Lease(NamedTuple):
    """One row of table 2 (immutable; a named tuple: built several times faster than a
    frozen dataclass, once per allocation)."""

    port: int
    login: str
    host: str
    lease: int
    message_id: str
    message_ids: tuple[str, ...]
    recipients: tuple[str, ...]
    context: str
    allocated_at: int
    updated_at: int
    expires: int

    def record(self) -> LeaseRecord:
        """What headers.verify checks a mail's link against."""
        return LeaseRecord(
            login=self.login,
            port=self.port,
            host=self.host,
            lease=self.lease,
            expires=self.expires,
            message_id=self.message_id,
            context=self.context,
            message_ids=frozenset(self.message_ids),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "port": self.port,
            "login": self.login,
            "host": self.host,
            "lease": self.lease,
            "message_id": self.message_id,
            "message_ids": list(self.message_ids),
            "recipients": list(self.recipients),
            "context": self.context,
            "allocated_at": self.allocated_at,
            "updated_at": self.updated_at,
            "expires": self.expires,
        }


class Grant(NamedTuple):
    """The outcome of one allocation: the lease, and the expiry of this mail's link."""

    lease: Lease
    expires: int
    reused: bool
    recycled_from: int | None  # the lease number the port had before, if recycled


class PortPool:
    def __init__(
        self,
        low: int,
        high: int,
        *,
        lease_seconds: int,
        leases: Iterable[Lease] = (),
        lease_reserved: int = 0,
    ) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError("bad port range")
        self.low, self.high = low, high
        self.lease_seconds = lease_seconds
        # port -> lease, least recently used first (the recycling order).
        self._leases: OrderedDict[int, Lease] = OrderedDict()
        self._by_message: dict[str, int] = {}
        self._by_login: dict[str, set[int]] = {}
        top = lease_reserved
        for lease in sorted(leases, key=lambda x: (x.updated_at, x.port)):
            self._put(lease)
            top = max(top, lease.lease)
        self._free = sorted(
            (p for p in range(low, high + 1) if p not in self._leases), reverse=True
        )
        self.next_lease = top + 1
        self.reserved = top  # lease numbers <= reserved are safe to hand out

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def get(self, port: int) -> Lease | None:
        return self._leases.get(port)

    def leases(self) -> list[Lease]:
        return sorted(self._leases.values(), key=lambda x: x.port)

    def leases_of(self, login: str) -> list[Lease]:
        """The leases ``login`` holds now (expired ones included until recycled)."""
        return [self._leases[port] for port in self._by_login.get(login, ())]

    def needs_reservation(self) -> bool:
        """True when the next lease number is not yet reserved on disk."""
        return self.next_lease > self.reserved

    def _put(self, lease: Lease) -> None:
        old = self._leases.pop(lease.port, None)
        if old is not None:
            for mid in old.message_ids:
                if self._by_message.get(mid) == lease.port:
                    del self._by_message[mid]
            ports = self._by_login.get(old.login)
            if ports is not None:
                ports.discard(lease.port)
                if not ports:
                    del self._by_login[old.login]
        self._leases[lease.port] = lease
        self._by_login.setdefault(lease.login, set()).add(lease.port)
        for mid in lease.message_ids:
            self._by_message[mid] = lease.port

    def _thread_lease(
        self, login: str, host: str, context: str, thread: Iterable[str], now: int
    ) -> Lease | None:
        for mid in thread:
            port = self._by_message.get(mid)
            if port is None:
                continue
            lease = self._leases[port]
            if (
                lease.login == login
                and lease.host.lower() == host.lower()
                and lease.context == context
                and lease.expires > now
                and len(lease.message_ids) < MAX_MESSAGE_IDS
            ):
                return lease
        return None

    def alloc(
        self,
        *,
        login: str,
        host: str,
        message_id: str,
        recipients: Iterable[str],
        thread: Iterable[str] = (),
        context: str = "",
        now: int,
    ) -> Grant:
        """Lease a port for ``message_id`` (validated by the caller). Never fails."""
        expires = now + self.lease_seconds
        rcpts = tuple(dict.fromkeys(recipients))
        if message_id in self._by_message:
            # The same mail asked twice (a retried send): same lease, same answer.
            same = self._leases[self._by_message[message_id]]
            if same.login == login and same.context == context and same.expires > now:
                return self._reuse(same, message_id, rcpts, now, expires)
        current = self._thread_lease(login, host, context, thread, now) if thread else None
        if current is not None:
            return self._reuse(current, message_id, rcpts, now, expires)
        # The caller reserves numbers on disk first (needs_reservation); either way a
        # number is never repeated within this process.
        number = self.next_lease
        self.next_lease += 1
        recycled_from: int | None = None
        if self._free:
            port = self._free.pop()
        else:
            port, old = next(iter(self._leases.items()))
            recycled_from = old.lease
        # positional (the field order of Lease): half the cost of keywords, per alloc
        lease = Lease(
            port, login, host, number, message_id, (message_id,), rcpts, context, now, now, expires
        )
        self._put(lease)
        return Grant(lease, expires, False, recycled_from)

    def _reuse(
        self, lease: Lease, message_id: str, rcpts: tuple[str, ...], now: int, expires: int
    ) -> Grant:
        mids = (
            lease.message_ids
            if message_id in lease.message_ids
            else (
                *lease.message_ids,
                message_id,
            )
        )
        new = lease._replace(
            message_ids=mids,
            recipients=tuple(dict.fromkeys((*lease.recipients, *rcpts))),
            updated_at=now,
            expires=max(lease.expires, expires),
        )
        self._put(new)
        return Grant(new, expires, reused=True, recycled_from=None)
