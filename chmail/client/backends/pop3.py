"""POP3 (RFC 1939): download new mail into a local Maildir, once per message.

Rules:

* A message is known by its UIDL (RFC 1939 7). Each download is written to the Maildir
  under a name derived from its UIDL, so even a crash between writing and recording
  cannot make a second copy; the UIDL is then recorded in the cache (``pop3_seen``).
* ``keep = false`` deletes a message on the server only after it is safely on disk.
* Security: ``tls`` (POP3S), ``starttls`` (STLS, RFC 2595), ``plain`` only to localhost.
* A message larger than ``max_size`` is left on the server with a warning.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import poplib
import re
import ssl
from collections.abc import Callable
from pathlib import Path

from chmail.client.cache import Cache
from chmail.errors import AuthError, ConfigError, ConnectionLost, MailError

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MAX_SIZE = 64 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def file_key(uidl: str) -> str:
    """A Maildir unique name for a UIDL (stable, filesystem-safe)."""
    digest = hashlib.sha256(uidl.encode("utf-8", "replace")).hexdigest()[:16]
    return f"pop3-{_SAFE.sub('_', uidl)[:40]}-{digest}"


class Pop3Fetcher:
    def __init__(
        self,
        account: str,
        cache: Cache,
        maildir: str | Path,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        security: str = "tls",
        keep: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        max_size: int = MAX_SIZE,
    ) -> None:
        if security == "plain" and host not in LOOPBACK:
            raise ConfigError(
                f'Refusing plain-text POP3 to {host}; use security = "tls" or "starttls".'
            )
        self.account = account
        self.cache = cache
        self.maildir = Path(maildir)
        self.host, self.port, self.user, self._password = host, port, user, password
        self.security, self.keep, self.timeout = security, keep, timeout
        self.max_size = max_size
        self._ssl = ssl_context

    async def fetch(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Download what is new; returns how many messages were stored."""
        known = await self.cache.pop3_known(self.account)
        stored, seen = await asyncio.to_thread(self._fetch, known, progress)
        await self.cache.pop3_mark(self.account, seen)
        return stored

    def _connect(self) -> poplib.POP3:
        ctx = self._ssl or ssl.create_default_context()
        try:
            if self.security == "tls":
                conn: poplib.POP3 = poplib.POP3_SSL(
                    self.host, self.port, timeout=self.timeout, context=ctx
                )
            else:
                conn = poplib.POP3(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    conn.stls(ctx)
        except (OSError, poplib.error_proto) as exc:
            raise ConnectionLost(
                f"Cannot connect to the POP3 server {self.host}:{self.port}: {exc}."
            ) from exc
        try:
            conn.user(self.user)
            conn.pass_(self._password)
        except poplib.error_proto as exc:
            conn.close()
            raise AuthError(
                f"The POP3 server {self.host} refused the login for {self.user!r}: "
                f"{exc.args[0].decode(errors='replace') if exc.args else exc}."
            ) from exc
        return conn

    def _fetch(
        self, known: set[str], progress: Callable[[int, int], None] | None
    ) -> tuple[int, list[str]]:
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        stored = 0
        seen: list[str] = []
        try:
            listing = {}
            for line in conn.list()[1]:
                num, _, size = line.decode().partition(" ")
                listing[num] = int(size or 0)
            todo = []
            for line in conn.uidl()[1]:
                num, _, uidl = line.decode("utf-8", "replace").partition(" ")
                todo.append((num, uidl))
            for i, (num, uidl) in enumerate(todo):
                if progress:
                    progress(i, len(todo))
                if uidl in known:
                    if not self.keep:
                        conn.dele(num)
                    continue
                if listing.get(num, 0) > self.max_size:
                    log.warning(
                        "POP3 message %s is larger than %d bytes; left on server",
                        num,
                        self.max_size,
                    )
                    continue
                key = file_key(uidl)
                target = self.maildir / "new" / key
                if not target.exists() and not any((self.maildir / "cur").glob(key + ":*")):
                    lines = conn.retr(num)[1]
                    data = b"\r\n".join(lines) + b"\r\n"
                    tmp = self.maildir / "tmp" / key
                    with open(tmp, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.rename(tmp, target)
                    stored += 1
                seen.append(uidl)
                if not self.keep:
                    conn.dele(num)
            conn.quit()
        except (OSError, poplib.error_proto) as exc:
            conn.close()
            if isinstance(exc, OSError):
                raise ConnectionLost(f"The POP3 connection to {self.host} dropped: {exc}.") from exc
            raise MailError(f"The POP3 server {self.host} said: {exc}.") from exc
        return stored, seen
