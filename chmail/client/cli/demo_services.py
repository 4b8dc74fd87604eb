"""The services of ``chmail demo`` (run in a child process by ``chmail demo --serve``).

Starts the CH server, the mail stack and the demo users, seeds the mailboxes, writes
``demo.json`` and runs until SIGTERM, then stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from chmail import protocol_routing as r
from chmail.chserver.app import build_server, hasher_for
from chmail.client.chlink import ChLink
from chmail.client.cli.demo import MALL, USERS, write_state
from chmail.client.compose import stamp
from chmail.config import ServerConfig
from chmail.devmail import dovecot as dv
from chmail.devmail import seed, smtp
from chmail.errors import ChmailError

log = logging.getLogger(__name__)

CAMPAIGN = 1
CONTEXT = "campaign=1; sku=A-100; lang=en"


def _mail(
    frm: tuple[str, str],
    to: tuple[str, str],
    subject: str,
    body: str,
    *,
    ago: float,
    html: str = "",
) -> tuple[EmailMessage, str]:
    msg = EmailMessage()
    msg["From"] = f"{frm[0]} <{frm[1]}>"
    msg["To"] = f"{to[0]} <{to[1]}>"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(time.time() - ago).astimezone())
    mid = make_msgid(domain=frm[1].split("@")[1])
    msg["Message-ID"] = mid
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg, mid


async def _stamped(
    link: ChLink, msg: EmailMessage, mid: str, rcpt: str, context: str = ""
) -> bytes:
    chat = await link.alloc_port(mid, [rcpt], context=context)
    return stamp(bytes(msg).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), chat)


async def seed_mail(links: dict[str, ChLink]) -> dict[str, list[bytes]]:
    """Each user's INBOX: varied mail plus chat-enabled mails."""
    alice_t, bob_t = USERS["alice"], USERS["bob"]
    boxes: dict[str, list[bytes]] = {
        "alice": seed.demo_messages(36, to=alice_t),
        "bob": seed.demo_messages(12, to=bob_t, seed=11),
        "operator": [],
    }
    msg, _ = _mail((MALL[1], MALL[2]), USERS["operator"], "Welcome to the chat desk",
                   "Customers who press c on a campaign mail are routed to you.\n"
                   "Press Q to see the queue; a ring pops up when one is routed to you.\n",
                   ago=7200)  # fmt: skip
    boxes["operator"].append(bytes(msg))
    msg, mid = _mail(
        bob_t,
        alice_t,
        "Lunch on Friday?",
        "Hi Alice,\n\nAre you free for lunch on Friday? The new noodle place opened.\n"
        "Press c on this mail in chmail and we can settle it in chat.\n\nBob\n",
        ago=600,
    )
    boxes["alice"].append(await _stamped(links["bob"], msg, mid, USERS["alice"][1]))
    msg, mid = _mail(
        alice_t,
        bob_t,
        "Slides for Monday",
        "Hi Bob,\n\nI put the slides for Monday's review in the shared folder.\n"
        "Tell me what you think — press c to chat.\n\nAlice\n",
        ago=1800,
    )
    boxes["bob"].append(await _stamped(links["alice"], msg, mid, USERS["bob"][1]))
    body = (
        "Dear Alice,\n\nThis week only: the A-100 espresso machine at 20% off.\n"
        "Questions? Press c on this mail and a mall operator will chat with you.\n\n"
        "Mall of Example\n"
    )
    html = (
        "<html><body><h1>A-100 espresso machine: 20% off</h1><p>This week only.</p>"
        "<p>Questions? Press <b>c</b> on this mail and a mall operator will chat with "
        "you.</p></body></html>"
    )
    msg, mid = _mail((MALL[1], MALL[2]), alice_t, "20% off the A-100 this week", body, ago=3600,
                     html=html)  # fmt: skip
    boxes["alice"].append(
        await _stamped(links[MALL[0]], msg, mid, USERS["alice"][1], context=CONTEXT)
    )
    return boxes


def _port_range(size: int = 200) -> str:
    """Chat ports for this run: a random block, so a busy port elsewhere rarely collides."""
    low = 46000 + secrets.randbelow((59000 - 46000) // size) * size
    return f"{low}-{low + size - 1}"


async def _quiet(coro: Any) -> None:
    try:
        await coro
    except ChmailError as exc:
        log.warning("brief not sent: %s", exc)


async def serve(data: Path) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    logins = [*USERS, MALL[0]]
    passwords = {u: secrets.token_urlsafe(12) for u in logins}
    emails = {**{u: [e] for u, (_, e) in USERS.items()}, MALL[0]: [MALL[2]]}

    scfg = ServerConfig(
        public_host="127.0.0.1", ports=_port_range(), data_dir=str(data / "chserver"),
        argon2_time_cost=1, argon2_memory_kib=8192,
    )  # fmt: skip
    server = await build_server(scfg, data / "chserver", public_host="127.0.0.1")
    hasher = hasher_for(scfg)
    for login in logins:
        await server.store.add_user(login, hasher.hash(passwords[login]), emails[login], 0)
    _, ch_port = await server.start("127.0.0.1", 0)
    log.info("CH server on 127.0.0.1:%d", ch_port)

    dovecot: dv.Dovecot | None = None
    relay: asyncio.Server | None = None
    links: dict[str, ChLink] = {}
    try:
        mail_root = data / "mail"
        if dv.available():
            dovecot = dv.Dovecot(users={u: passwords[u] for u in USERS}, ssl=False, fsync=True)
            await asyncio.to_thread(dovecot.start)
            handler = smtp.DeliveryHandler(lmtp_path=dovecot.lmtp_path, users=set(USERS))
            kind = "imap"
        else:
            log.warning("Dovecot is not installed: the demo uses Maildirs")
            handler = smtp.DeliveryHandler(mail_root=mail_root, users=set(USERS))
            kind = "maildir"
        relay = await smtp.start_server(handler)
        smtp_port = smtp.server_port(relay)

        links = {
            u: ChLink("127.0.0.1", ch_port, u, passwords[u]) for u in ("alice", "bob", MALL[0])
        }
        for link in links.values():
            await link.start()
        mall = links[MALL[0]]

        def brief(msg: object) -> None:
            # What the mall back office would send: the operator sees campaign and product.
            if isinstance(msg, r.RouteEvent) and msg.kind == "routed":
                info = {"campaign": "A-100 week (20% off)", "product": "A-100 espresso machine",
                        "member": msg.member}  # fmt: skip
                out = r.Brief(call=msg.call, operator=msg.operator, campaign=CAMPAIGN, data=info)
                asyncio.get_running_loop().create_task(_quiet(mall.request(out)))

        mall.on_push(brief)
        try:
            await links[MALL[0]].request(r.RoutePool(campaign=CAMPAIGN, operators=["operator"]))
        except ChmailError as exc:  # routing is the shop's part; the demo runs without it
            log.warning("campaign chats will not be routed to the operator: %s", exc)
        boxes = await seed_mail(links)
        await links["alice"].close()
        await links["bob"].close()
        for user, msgs in boxes.items():
            if not msgs:
                continue
            if dovecot is not None:
                await seed.seed_imap("127.0.0.1", dovecot.imap_port, user, passwords[user], msgs)
            else:
                seed.seed_maildir(mail_root / user / "Maildir", msgs)

        write_state(
            data,
            {
                "pid": os.getpid(),
                "kind": kind,
                "ch_port": ch_port,
                "smtp_port": smtp_port,
                "imap_port": dovecot.imap_port if dovecot else 0,
                "mail_root": str(mail_root),
                "passwords": {u: passwords[u] for u in USERS},
                "started": time.time(),
            },
        )
        log.info("demo ready (mail: %s)", kind)
        await stop.wait()
    finally:
        # Whatever was started is stopped, also when start-up failed half-way.
        log.info("stopping the demo")
        with contextlib.suppress(FileNotFoundError):
            (data / "demo.json").unlink()
        for link in links.values():
            with contextlib.suppress(ChmailError):
                await link.close()
        if relay is not None:
            relay.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay.wait_closed(), 5)
        await server.stop()
        if dovecot is not None:
            await asyncio.to_thread(dovecot.cleanup)
    return 0
