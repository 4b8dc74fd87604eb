"""Shared set-up of the chat tests: logged-in clients with a chat engine each, on the real
CH server of tests/fixtures/chserver.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chmail import headers
from chmail import protocol as p
from chmail.client.chat import ChatEngine, MailRef, mail_ref
from chmail.client.chatsession import SessionClient
from chmail.client.chlink import ChLink
from tests.fixtures.chserver import RunningServer

E = TypeVar("E")


def port_range(n: int = 40) -> str:
    """A range of ``n`` ports unlikely to be in use (chat sessions listen on them): below
    Linux's ephemeral range (32768-60999), where outgoing connections take their ports."""
    low = random.randrange(20000, 32000, n)
    return f"{low}-{low + n - 1}"


def chat_config(**kw: Any) -> dict[str, Any]:
    """Server settings of the chat tests: sessions on 127.0.0.1, on random ports."""
    return {"public_host": "127.0.0.1", "ports": port_range(), **kw}


@dataclass
class Client:
    """One user's client: the live link and the chat engine on it."""

    login: str
    link: ChLink
    engine: ChatEngine
    sessions: list[SessionClient] = field(default_factory=list)

    async def send_mail(self, *recipients: str, subject: str = "Lunch?") -> MailRef:
        """Lease a port for a mail to ``recipients``; the headers the mail would carry."""
        mid = f"<{random.getrandbits(64):x}.{self.login}@example.org>"
        got = await self.link.request(p.Alloc(message_id=mid, recipients=list(recipients)))
        assert isinstance(got, p.Allocated), got
        mac = got.sig.rsplit("s=", 1)[1]
        link = headers.ChatLink(
            got.login, got.port, got.host, got.lease, got.expires, mac, got.context
        )
        return mail_ref([*link.headers(), ("Message-ID", mid), ("Subject", subject)])

    async def join(self, state: p.CallState) -> SessionClient:
        s = await self.engine.join(state)
        self.sessions.append(s)
        return s

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()
        await self.engine.close()
        await self.link.close()


async def connect(
    srv: RunningServer, login: str, *, direct_host: str = "", direct_bind: str = ""
) -> Client:
    """Log ``login`` in to ``srv`` with a real ChLink and start a chat engine on it."""
    link = srv.link(login, advertised_host=direct_host or "client.test", direct=bool(direct_host))
    await link.start()
    engine = ChatEngine(
        link, login, direct_host=direct_host, direct_bind=direct_bind, heartbeat=2.0
    )
    return Client(login, link, engine)


async def next_event(
    queue: asyncio.Queue[Any], kind: type[E], pred: Callable[[E], bool] = lambda e: True
) -> E:
    """The next item of ``kind`` matching ``pred`` from ``queue`` (others skipped)."""
    async with asyncio.timeout(15):
        while True:
            ev = await queue.get()
            if isinstance(ev, kind) and pred(ev):
                return ev


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` until it holds (10 s at most)."""
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.01)
