"""An aiosmtpd SMTP server on 127.0.0.1 that delivers to local users.

With Dovecot running, mail goes through Dovecot's LMTP socket (Dovecot indexes it and wakes
IDLE clients; unknown users get Dovecot's 550). Without Dovecot it is written straight into
``<mail_root>/<user>/Maildir``. The user is the recipient's local part; any domain is
accepted, so ``alice@example.org`` and ``alice@localhost`` are the same mailbox.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from chmail.devmail import lmtp

log = logging.getLogger(__name__)

DATA_SIZE_LIMIT = 50 * 1024 * 1024


def local_user(address: str) -> str:
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


@dataclass
class DeliveryHandler:
    """aiosmtpd handler: LMTP to Dovecot if ``lmtp_path`` is set, else Maildir files."""

    lmtp_path: Path | None = None
    mail_root: Path | None = None
    users: set[str] | None = None  # None: accept any local part
    delivered: int = 0
    received: list[bytes] = field(default_factory=list)  # kept only if keep=True
    keep: bool = False

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.users is not None and local_user(address) not in self.users:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if self.keep:
            self.received.append(data)
        sender = envelope.mail_from or ""
        rcpts = list(envelope.rcpt_tos)
        if self.lmtp_path is not None:
            try:
                res = await lmtp.deliver(self.lmtp_path, sender, rcpts, data)
            except (OSError, TimeoutError) as exc:
                log.warning("LMTP delivery failed: %s", exc)
                return "451 4.3.0 Local delivery is unavailable, try again later"
            bad = [(r, c, t) for r, (c, t) in res.items() if c >= 400]
            if len(bad) == len(rcpts) and bad:
                return f"{bad[0][1]} {bad[0][2]}"
            for r, code, text in bad:
                log.warning("LMTP refused %s: %s %s", r, code, text)
        elif self.mail_root is not None:
            await asyncio.to_thread(self._to_maildirs, rcpts, data)
        self.delivered += 1
        return "250 OK delivered"

    def _to_maildirs(self, rcpts: list[str], data: bytes) -> None:
        assert self.mail_root is not None
        for user in {local_user(r) for r in rcpts}:
            (self.mail_root / user).mkdir(parents=True, exist_ok=True)
            box = mailbox.Maildir(self.mail_root / user / "Maildir", create=True)
            box.add(data)


async def start_server(handler: Any, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Serve SMTP in the running loop. No TLS context, so no STARTTLS is offered."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=host,
            data_size_limit=DATA_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            decode_data=False,
        ),
        host,
        port,
    )
    return server


def server_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


class ThreadedSmtp:
    """An SMTP server on its own loop in a thread: for session-long test fixtures and for
    callers without a loop. ``start()`` returns once the port accepts."""

    def __init__(self, handler: Any, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_server(self.handler, self.host), self._loop)
        self._server = fut.result(timeout=10)
        self.port = server_port(self._server)

    def stop(self) -> None:
        async def _close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
