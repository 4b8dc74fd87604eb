"""Build the engines from the Config, run the app, close everything after.

Nothing here touches the network before the app is on screen: the IMAP backends, the
outbox and the CH link connect in the background once the TUI is up, so a dead server
shows as a status line, never as a frozen terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from chmail import config as cfgmod
from chmail.client.accounts import open_account, password
from chmail.client.cache import Cache
from chmail.client.chlink import ChLink
from chmail.client.outbox import Outbox, smtp_target
from chmail.client.tui.engine_chat import ChatBridge
from chmail.client.tui.engine_mail import AccountEngine, CacheMail
from chmail.config import AccountConfig, Config
from chmail.errors import ChmailError

log = logging.getLogger(__name__)


def log_to_file(config: Config) -> Path:
    """Send every log record to a file: the terminal belongs to the TUI."""
    path = Path(config.ui.log_file) if config.ui.log_file else cfgmod.state_dir() / "chmail.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return path


class Engines:
    """The mail and chat engines of one TUI run, and the tasks they need."""

    def __init__(self, mail: CacheMail, chat: ChatBridge | None, links: list[ChLink]) -> None:
        self.mail = mail
        self.chat = chat
        self.links = links
        self.outboxes: list[Outbox] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.notes: list[str] = []

    def start_background(self) -> None:
        """Outboxes and the CH links of accounts other than the chat one."""
        loop = asyncio.get_running_loop()
        for box in self.outboxes:
            self._tasks.append(loop.create_task(box.run(self._stop)))
        for link in self.links:
            self._tasks.append(loop.create_task(_start_link(link)))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ChmailError, TimeoutError):
                await asyncio.wait_for(task, 5)
        if self.chat is not None:
            with contextlib.suppress(ChmailError):
                await self.chat.close()
        for link in self.links:
            with contextlib.suppress(ChmailError):
                await link.close()
        await self.mail.close()


async def build(config: Config, cache_path: Path | None = None) -> Engines:
    """Open the cache and build every account's engines (no network yet)."""
    cache = await Cache.open(cache_path)
    accounts: dict[str, AccountEngine] = {}
    links: list[ChLink] = []
    chat: ChatBridge | None = None
    mail = CacheMail(cache, accounts)
    engines = Engines(mail, None, links)
    for acc in config.accounts:
        eng = AccountEngine(acc)
        try:
            account = await open_account(acc, cache)
        except ChmailError as exc:
            engines.notes.append(f"{acc.name}: {exc}")
            accounts[acc.name] = eng
            continue
        eng.syncer = account.syncer
        eng.append = _appender(account.backend)
        eng.close = account.close
        link = await _link(acc, engines)
        if acc.smtp.host:
            eng.outbox = _outbox(cache, acc, link, account.backend, engines)
        if link is not None:
            if chat is None:
                chat = ChatBridge(link, cache, acc.ch.login, filer=mail.file_into_thread)
            else:
                links.append(link)
        accounts[acc.name] = eng
    mail.accounts = accounts
    engines.chat = chat
    return engines


async def _start_link(link: ChLink) -> None:
    try:
        await link.start()
    except ChmailError as exc:
        log.info("CH link %s: %s", link.address, exc)


def _appender(backend: Any) -> Any:
    async def append(folder: str, raw: bytes) -> None:
        await backend.append(folder, raw, flags=("\\Seen",))

    return append


async def _link(acc: AccountConfig, engines: Engines) -> ChLink | None:
    if not acc.ch.server:
        return None
    try:
        return await ChLink.from_account(acc)
    except ChmailError as exc:
        engines.notes.append(f"{acc.name}: chat is off: {exc}")
        return None


def _outbox(
    cache: Cache, acc: AccountConfig, link: ChLink | None, backend: Any, engines: Engines
) -> Outbox | None:
    async def pw() -> str:
        return await password(acc, "smtp", acc.smtp) if acc.smtp.password_command else ""

    try:
        box = Outbox(cache, acc, smtp_target(acc, pw), allocator=link, sent_store=backend)
    except ChmailError as exc:
        engines.notes.append(f"{acc.name}: cannot send: {exc}")
        return None
    engines.outboxes.append(box)
    return box
