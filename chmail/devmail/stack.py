"""The local mail stack of ``chmail devmail`` and ``chmail demo``.

An aiosmtpd SMTP server on 127.0.0.1 delivering to per-user Maildirs under
``<data>/mail/<user>/Maildir``, and, when Dovecot is installed, a Dovecot serving those same
Maildirs over IMAP and POP3 (SMTP then delivers through Dovecot's LMTP). Without Dovecot
the Maildirs are written directly and clients use them as Maildir accounts.

Under root, Dovecot runs as ``nobody``, which must be able to reach ``<data>``; when it
cannot (e.g. a data dir inside /root), the Maildirs live in
``/var/tmp/chmail-devmail-<hash of data dir>`` instead, and ``DevMail.mail_root`` says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from chmail.config import AccountConfig, EndpointConfig
from chmail.devmail import dovecot as dv
from chmail.devmail.seed import demo_messages, seed_maildir
from chmail.devmail.smtp import DeliveryHandler, server_port, start_server

log = logging.getLogger(__name__)

SHARED_TMP = Path("/var/tmp")  # noqa: S108 (a fixed, reused place: Maildirs must persist)
DEFAULT_USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
DOMAIN = "example.org"


def _reachable_by_others(path: Path) -> bool:
    """Can a non-owner traverse every directory down to ``path``?"""
    p = path.resolve()
    for parent in [*reversed(p.parents), p]:
        if parent.exists() and not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


@dataclass
class DevMail:
    data: Path
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    use_dovecot: bool = True
    smtp_port: int = 0  # 0: a free port
    mail_root: Path | None = None  # default <data>/mail (see the module docstring)
    dovecot: dv.Dovecot | None = None
    server: asyncio.Server | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data).expanduser().resolve()
        if self.mail_root is not None:
            self.mail_root = Path(self.mail_root)
            return
        self.mail_root = self.data / "mail"
        as_root = os.geteuid() == 0 and self.use_dovecot and dv.available()
        if as_root and not _reachable_by_others(self.data):
            tag = hashlib.sha256(str(self.data).encode()).hexdigest()[:10]
            self.mail_root = SHARED_TMP / f"chmail-devmail-{tag}" / "mail"

    @property
    def root(self) -> Path:
        assert self.mail_root is not None
        return self.mail_root

    def maildir(self, user: str) -> Path:
        return self.root / user / "Maildir"

    @property
    def imap_port(self) -> int:
        return self.dovecot.imap_port if self.dovecot else 0

    @property
    def pop3_port(self) -> int:
        return self.dovecot.pop3_port if self.dovecot else 0

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.use_dovecot and dv.available():
            self.dovecot = dv.Dovecot(users=dict(self.users), mail_root=self.root, fsync=True)
            await asyncio.to_thread(self.dovecot.start)
            handler = DeliveryHandler(lmtp_path=self.dovecot.lmtp_path)
        else:
            handler = DeliveryHandler(mail_root=self.root, users=set(self.users))
        self.server = await start_server(handler, port=self.smtp_port)
        self.smtp_port = server_port(self.server)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.dovecot is not None:
            await asyncio.to_thread(self.dovecot.cleanup)
            self.dovecot = None

    async def seed(self, user: str, count: int = 60) -> int:
        """Give ``user`` a demo mailbox (only if their INBOX is empty)."""
        md = self.maildir(user)
        if any(d.is_dir() and any(d.iterdir()) for d in (md / "cur", md / "new")):
            return 0
        msgs = demo_messages(count, to=(user.capitalize(), f"{user}@{DOMAIN}"))
        if self.dovecot is not None:
            from chmail.devmail.seed import seed_imap

            return await seed_imap("127.0.0.1", self.imap_port, user, self.users[user], msgs)
        return await asyncio.to_thread(seed_maildir, md, msgs)

    def account(self, user: str, *, kind: str = "") -> AccountConfig:
        """A chmail account for ``user`` on this stack (IMAP if Dovecot runs, else Maildir)."""
        kind = kind or ("imap" if self.dovecot is not None else "maildir")
        pw = f"printf %s {self.users[user]}"
        return AccountConfig(
            name=user, email=f"{user}@{DOMAIN}", display_name=user.capitalize(), kind=kind,
            maildir=str(self.maildir(user)) if kind == "maildir" else "",
            imap=EndpointConfig(host="127.0.0.1", port=self.imap_port, security="plain",
                                user=user, password_command=pw),
            pop3=EndpointConfig(host="127.0.0.1", port=self.pop3_port, security="plain",
                                user=user, password_command=pw),
            smtp=EndpointConfig(host="127.0.0.1", port=self.smtp_port, security="plain"),
        )  # fmt: skip

    def describe(self) -> str:
        lines = [
            f"SMTP    127.0.0.1:{self.smtp_port} (plain, no login; any domain, user = local part)"
        ]
        if self.dovecot is not None:
            imaps = self.dovecot.imaps_port
            lines.append(f"IMAP    127.0.0.1:{self.imap_port} (plain)   IMAPS 127.0.0.1:{imaps}")
            lines.append(f"POP3    127.0.0.1:{self.pop3_port} (plain)")
        else:
            lines.append("IMAP/POP3: Dovecot is not installed; use the Maildirs directly")
        lines.append(f"Maildirs {self.root}/<user>/Maildir")
        lines.append("Users   " + ", ".join(f"{u} (password {p})" for u, p in self.users.items()))
        return "\n".join(lines)

    def config_snippet(self, user: str) -> str:
        """The ``[[accounts]]`` entry of ``user`` as TOML."""
        acc = self.account(user)
        entry: dict[str, Any] = {"name": user, "email": acc.email, "kind": acc.kind}
        if acc.kind == "imap":
            imap = acc.imap
            entry["imap"] = {"host": imap.host, "port": imap.port, "security": "plain",
                             "user": user, "password_command": imap.password_command}  # fmt: skip
        else:
            entry["maildir"] = acc.maildir
        entry["smtp"] = {"host": "127.0.0.1", "port": self.smtp_port, "security": "plain"}
        return tomli_w.dumps({"accounts": [entry]})
