"""Set-up shared by the TUI tests: a real user's TUI on the real mail stack and CH server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot

from chmail import config as cfgmod
from chmail.client.chlink import ChLink
from chmail.client.compose import stamp
from chmail.client.tui import boot
from chmail.client.tui.app import ChmailApp
from chmail.config import AccountConfig, ChAccountConfig, Config, UiConfig
from chmail.devmail import lmtp
from tests.fixtures.chserver import RunningServer
from tests.fixtures.mailstack import MailUser

DEADLINE = 20.0


def port_range(n: int = 40) -> str:
    low = random.randrange(46000, 59000, n)
    return f"{low}-{low + n - 1}"


def chat_server_config() -> dict[str, Any]:
    """CH server settings for chat tests: sessions on 127.0.0.1, on a random port range."""
    return {"public_host": "127.0.0.1", "ports": port_range()}


async def add_ch_user(srv: RunningServer, user: MailUser) -> str:
    return await srv.add_user(user.name, emails=[user.address])


def account(user: MailUser, srv: RunningServer | None) -> AccountConfig:
    ch = ChAccountConfig()
    if srv is not None:
        ch = ChAccountConfig(
            server=f"{srv.host}:{srv.port}",
            login=user.name,
            password_command=f"printf %s {srv.passwords[user.name]}",
        )
    return user.account_config(kind="imap", ch=ch)


def config_for(user: MailUser, srv: RunningServer | None, **ui: Any) -> Config:
    return Config(accounts=(account(user, srv),), ui=UiConfig(threaded=False, **ui))


@asynccontextmanager
async def running_tui(
    config: Config, tmp: Path, size: tuple[int, int] = (120, 36)
) -> AsyncIterator[tuple[ChmailApp, Pilot[None]]]:
    """The real TUI on ``config`` (real cache file, real backends, real CH link)."""
    engines = await boot.build(config, tmp / f"cache-{config.accounts[0].name}.sqlite3")
    app = ChmailApp(config, engines.mail, engines.chat)
    engines.start_background()
    try:
        async with app.run_test(size=size) as pilot:
            yield app, pilot
    finally:
        await engines.close()


async def wait_for(pilot: Pilot[Any], cond: Callable[[], Any], what: str = "") -> None:
    """Let the app run until ``cond()`` holds (a deadline, never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        if loop.time() > end:
            seen = screen_text(pilot.app) if isinstance(pilot.app, ChmailApp) else ""
            raise AssertionError(f"timed out waiting for {what or cond}; screen:\n{seen}")
        await pilot.pause(0.05)


def screen_text(app: App[Any]) -> str:
    """Everything the user sees, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def mail(frm: str, to: str, subject: str, body: str) -> tuple[EmailMessage, str]:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    mid = make_msgid(domain="example.org")
    msg["Message-ID"] = mid
    msg["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    msg.set_content(body)
    return msg, mid


async def deliver(user: MailUser, raw: bytes, sender: str = "someone@example.org") -> None:
    res = await lmtp.deliver(user.stack.dovecot.lmtp_path, sender, [user.address], raw)
    assert all(code < 300 for code, _ in res.values()), res


async def deliver_chat_mail(
    srv: RunningServer, sender: MailUser, to: MailUser, subject: str, body: str = "Hi!"
) -> str:
    """A mail from ``sender`` to ``to`` stamped with a real chat link (S103-S105)."""
    msg, mid = mail(sender.address, to.address, subject, body)
    link = ChLink(srv.host, srv.port, sender.name, srv.passwords[sender.name])
    await link.start()
    try:
        chat = await link.alloc_port(mid, [to.address])
    finally:
        await link.close()
    await deliver(to, stamp(bytes(msg), chat), sender.address)
    return mid


def empty_config() -> Config:
    return cfgmod.from_dict({})
