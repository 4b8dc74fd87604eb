"""Shared set-up of the chat tests: logged-in clients with a chat engine each, on the real
CH server of tests/fixtures/chserver.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chmail import headers
from chmail import protocol as p
from chmail.client.chat import ChatEngine, MailRef, mail_ref
from chmail.client.chatsession import SessionClient
from chmail.errors import ServerError
from tests.fixtures.chserver import RawClient, RunningServer

E = TypeVar("E")


def port_range(n: int = 40) -> str:
    """A range of ``n`` ports unlikely to be in use (chat sessions listen on them)."""
    low = random.randrange(42000, 59000, n)
    return f"{low}-{low + n - 1}"


def chat_config(**kw: Any) -> dict[str, Any]:
    """Server settings of the chat tests: sessions on 127.0.0.1, on random ports."""
    return {"public_host": "127.0.0.1", "ports": port_range(), **kw}


class TestLink:
    """chmail.client.chat.Link over the fixture's RawClient: replies by id, pushes by type."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.handlers: dict[str, Callable[[p.Message], None]] = {}
        self.waiting: dict[int, asyncio.Future[p.Message]] = {}
        self.task = asyncio.get_running_loop().create_task(self._read())

    def on_push(self, t: str, handler: Callable[[p.Message], None]) -> None:
        self.handlers[t] = handler

    async def request(self, msg: p.Message) -> p.Message:
        rid = self.raw.next_id()
        msg = dataclasses.replace(msg, id=rid)  # type: ignore[call-arg]
        fut: asyncio.Future[p.Message] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.raw.send(msg)
        reply = await fut
        if isinstance(reply, p.Error):
            raise ServerError(reply.message, code=reply.code)
        return reply

    async def _read(self) -> None:
        while True:
            try:
                msg = await self.raw.recv(timeout=3600)
            except ConnectionError:
                return
            if isinstance(msg, p.Ping):
                self.raw.send(p.Pong(n=msg.n))
                continue
            rid = getattr(msg, "id", None)
            if rid is not None and rid in self.waiting:
                self.waiting.pop(rid).set_result(msg)
            elif msg.t in self.handlers:
                self.handlers[msg.t](msg)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self.task
        await self.raw.aclose()


@dataclass
class Client:
    """One user's client: the live link and the chat engine on it."""

    login: str
    link: TestLink
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
    """Log ``login`` in to ``srv`` and start a chat engine on that link."""
    raw = await RawClient.connect(srv.host, srv.port)
    reply = await raw.request(
        p.Auth(
            login=login,
            password=srv.passwords[login],
            host=direct_host or "client.test",
            direct=bool(direct_host),
        )
    )
    assert isinstance(reply, p.AuthOk), reply
    link = TestLink(raw)
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
