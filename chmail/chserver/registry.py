"""Table 1 and presence (S101, S113): who is connected, from where, right now.

Rules:

* Every successful auth writes the login's latest advertised host and the IP the server
  observed (a reconnect from elsewhere replaces both) and marks the login online.
* A login is online while at least one authenticated connection of it is alive; the
  heartbeat sweeper drops silent connections, which is what "offline" means.
* The in-memory map is the truth for presence; table 1's ``online`` column mirrors it
  for ``chmail-server tables`` (another process) and is reset at start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from chmail.chserver.store import ServerStore

if TYPE_CHECKING:
    from chmail.chserver.server import Context


class Registry:
    def __init__(self, store: ServerStore) -> None:
        self.store = store
        self._online: dict[str, dict[int, Context]] = {}

    async def attach(self, ctx: Context, *, host: str, observed_ip: str, direct: bool) -> None:
        """Record a successful auth of ``ctx`` (its ``login`` is already set)."""
        login = ctx.login
        assert login is not None
        self._online.setdefault(login, {})[ctx.id] = ctx
        await self.store.record_login(login, host, observed_ip, direct, int(time.time()))

    async def detach(self, ctx: Context) -> None:
        """The connection is gone; the login goes offline when it was the last one."""
        login = ctx.login
        if login is None:
            return
        conns = self._online.get(login)
        if conns is None or conns.pop(ctx.id, None) is None:
            return
        if not conns:
            del self._online[login]
            await self.store.set_offline(login, int(time.time()))

    def is_online(self, login: str) -> bool:
        return bool(self._online.get(login))

    def connections(self, login: str) -> list[Context]:
        return list(self._online.get(login, {}).values())

    def logins(self) -> Iterator[str]:
        return iter(list(self._online))

    def count(self) -> int:
        return sum(len(c) for c in self._online.values())
