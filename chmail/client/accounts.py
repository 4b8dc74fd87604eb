"""From an ``[[accounts]]`` entry to live objects: backend(s), syncer, POP3 fetcher.

IMAP accounts get two connections (one for the user's actions and sync, one that IDLEs).
Maildir accounts read the directory in ``maildir``. POP3 accounts download into a local
Maildir (``maildir``, default ``$XDG_DATA_HOME/chmail/pop3/<account>``) which is then
mirrored like any Maildir, so a POP3 mailbox gets folders, flags and search too.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from chmail import config
from chmail.client import passwords
from chmail.client.backends.base import Backend
from chmail.client.backends.imap import ImapBackend
from chmail.client.backends.maildir import MaildirBackend
from chmail.client.backends.pop3 import Pop3Fetcher
from chmail.client.cache import Cache
from chmail.client.sync import Syncer
from chmail.config import AccountConfig, EndpointConfig
from chmail.errors import ConfigError

KINDS = ("imap", "maildir", "pop3")
DEFAULT_PORTS = {
    ("imap", "tls"): 993, ("imap", "starttls"): 143, ("imap", "plain"): 143,
    ("pop3", "tls"): 995, ("pop3", "starttls"): 110, ("pop3", "plain"): 110,
    ("smtp", "tls"): 465, ("smtp", "starttls"): 587, ("smtp", "plain"): 25,
}  # fmt: skip


def port_of(what: str, ep: EndpointConfig) -> int:
    return ep.port or DEFAULT_PORTS.get((what, ep.security), 0)


def ssl_context(ep: EndpointConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ep.ca_file:
        ctx.load_verify_locations(ep.ca_file)
    return ctx


async def password(acc: AccountConfig, what: str, ep: EndpointConfig) -> str:
    return await passwords.get(
        account=acc.name, what=what, command=ep.password_command, use_keyring=ep.keyring
    )


def maildir_path(acc: AccountConfig) -> Path:
    if acc.maildir:
        return Path(acc.maildir).expanduser()
    if acc.kind == "pop3":
        return config.data_dir() / "pop3" / acc.name
    raise ConfigError(f"Account {acc.name!r} is a Maildir account but has no maildir path.")


async def make_backend(acc: AccountConfig) -> Backend:
    return make_backend_lazy(acc)


def make_backend_lazy(acc: AccountConfig) -> Backend:
    """The account's backend; an IMAP password is looked up when it connects."""
    if acc.kind == "imap":
        ep = acc.imap
        if not ep.host:
            raise ConfigError(f"Account {acc.name!r}: [accounts.imap] host is missing.")

        async def pw() -> str:
            return await password(acc, "imap", ep)

        return ImapBackend(
            acc.name,
            host=ep.host,
            port=port_of("imap", ep),
            user=ep.user or acc.email,
            password=pw,
            security=ep.security,
            ssl_context=ssl_context(ep) if ep.security != "plain" else None,
        )
    if acc.kind in ("maildir", "pop3"):
        return MaildirBackend(acc.name, maildir_path(acc))
    raise ConfigError(f"Account {acc.name!r}: kind must be one of {', '.join(KINDS)}.")


@dataclass
class Account:
    config: AccountConfig
    cache: Cache
    backend: Backend
    syncer: Syncer
    pop3: Pop3Fetcher | None = None

    @property
    def name(self) -> str:
        return self.config.name

    async def sync(self, progress: object = None) -> None:
        """POP3 download (if any) and a full sync of the local view."""
        await self.syncer.sync_all(progress)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.backend.close()
        if self.syncer.watcher is not None:
            await self.syncer.watcher.close()


async def open_account(acc: AccountConfig, cache: Cache, *, watcher: bool = True) -> Account:
    """Build (not yet connect) the objects of one account."""
    backend = await make_backend(acc)
    second = await make_backend(acc) if watcher and acc.kind == "imap" else None
    syncer = Syncer(cache, backend, acc.name, watcher=second)
    pop = None
    if acc.kind == "pop3":
        ep = acc.pop3
        pop = Pop3Fetcher(
            acc.name,
            cache,
            maildir_path(acc),
            host=ep.host,
            port=port_of("pop3", ep),
            user=ep.user or acc.email,
            password=await password(acc, "pop3", ep),
            security=ep.security,
            keep=acc.pop3_keep,
            ssl_context=ssl_context(ep) if ep.security != "plain" else None,
        )
    if pop is not None:
        syncer.fetch_first = pop.fetch  # every sync (and run()'s periodic one) downloads first
        syncer.interval = 60.0
    return Account(acc, cache, backend, syncer, pop)
