"""Helpers for the shop tests: an in-loop aiosmtpd sink that counts mail by Message-ID
and can answer chosen recipients with 4xx or 5xx, plus data builders."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from chmail.config import ShopConfig
from shop_publicity.store import Store


@dataclass
class Sink:
    """aiosmtpd handler: records every accepted mail."""

    by_msgid: Counter[str] = field(default_factory=Counter)
    by_rcpt: Counter[str] = field(default_factory=Counter)
    msgids_by_rcpt: dict[str, set[str]] = field(default_factory=dict)
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    temp_fail: dict[str, int] = field(default_factory=dict)  # rcpt -> 4xx answers left
    perm_fail: set[str] = field(default_factory=set)
    data_temp_fail: dict[str, int] = field(default_factory=dict)
    keep: bool = False
    waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_msgid.values())

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.perm_fail:
            return "550 5.1.1 No such user here"
        if self.temp_fail.get(address, 0) > 0:
            self.temp_fail[address] -= 1
            return "451 4.7.1 Greylisted, come back later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0]
        if self.data_temp_fail.get(rcpt, 0) > 0:
            self.data_temp_fail[rcpt] -= 1
            return "452 4.3.1 Insufficient system storage"
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        msgid = str(msg["Message-ID"])
        self.by_msgid[msgid] += 1
        self.by_rcpt[rcpt] += 1
        self.msgids_by_rcpt.setdefault(rcpt, set()).add(msgid)
        if self.keep:
            self.messages.append(msg)  # type: ignore[arg-type]
        for target, ev in self.waiters:
            if self.total >= target:
                ev.set()
        return "250 Message accepted for delivery"

    async def wait_total(self, target: int, timeout: float = 60.0) -> None:
        ev = asyncio.Event()
        self.waiters.append((target, ev))
        if self.total >= target:
            ev.set()
        await asyncio.wait_for(ev.wait(), timeout)
        self.waiters.remove((target, ev))


async def start_sink(sink: Sink) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink.test", loop=loop), "127.0.0.1", 0
    )
    return server, int(server.sockets[0].getsockname()[1])


def shop_config(port: int, **kw: Any) -> ShopConfig:
    base: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "from_addr": "mall@shop.test",
        "rate_per_second": 0.0,
        "pool_size": 4,
        "retry_base": 0.02,
        "retry_max": 0.05,
        "unsubscribe_base_url": "http://127.0.0.1:1",
    }
    base.update(kw)
    return ShopConfig(**base)


def members_csv(path: Path, n: int, *, interests: str = "shoes") -> Path:
    lines = ["email,name,interests,age_band"]
    lines += [f"m{i}@example.com,Member {i},{interests},30-39" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def seeded_store(data: Path, n: int) -> Store:
    from shop_publicity import members, products

    store = await Store.open(data)
    await members.import_csv(store, members_csv(data.parent / f"members-{n}.csv", n))
    await products.add(store, products.check_product("A-100", "Trail shoe", price="89.00"))
    return store
