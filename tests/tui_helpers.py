"""Helpers for the TUI tests and bench: a real cache filled with realistic messages."""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path

from chmail.client.cache import Cache, NewMessage
from chmail.client.cache_models import SEEN

NAMES = [
    ("Bob Martin", "bob@example.org"),
    ("Carol Wu", "carol@example.org"),
    ("Dave Kim", "dave@example.net"),
    ("Erin Park", "erin@example.com"),
    ("Mall of Seoul", "mall@shop.example"),
]
SUBJECTS = [
    "Lunch on Friday?",
    "Quarterly report draft",
    "Your order has shipped",
    "Re: holiday plans",
    "Invoice 2026-11",
    "Meeting notes",
]
# Escape sequences a hostile mail carries: clear the screen, paint red, set the window
# title (OSC ... BEL), and the one-byte C1 CSI.
HOSTILE_MAIL = (
    b"From: =?utf-8?q?Mal=1B[5mlory?= <mallory@example.org>\r\n"
    b"To: someone@example.org\r\n"
    b"Subject: =?utf-8?q?Invoice_=1B[2J=1B[31mpaid=1B]0;pwned=07?=\r\n"
    b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <hostile@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Hello \x1b[2J\x1b[41mred\x1b]0;pwned\x07 and \xc2\x9b31m C1.\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="a\x1b[8mb.pdf"\r\n\r\nxyz\r\n--b--\r\n'
)
# What a terminal would obey if it reached it (C0 but the line feed, DEL, C1).
TERMINAL_CONTROLS = {chr(c) for c in [*range(0x00, 0x0A), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
BASE_TS = 1_600_000_000  # 2020-09-13: a fixed past instant, so snapshots do not move


def raw_mail(
    frm: tuple[str, str], to: str, subject: str, body: str, msgid: str, *, ch: str = ""
) -> bytes:
    m = EmailMessage()
    m["From"] = f"{frm[0]} <{frm[1]}>"
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    m["Message-ID"] = msgid
    if ch:
        m["X-CH-Login"] = ch
        m["X-CH-Port"] = "41001"
        m["X-CH-Host"] = "127.0.0.1"
    m.set_content(body)
    return bytes(m)


def new_message(i: int, *, thread_every: int = 0) -> NewMessage:
    name, addr = NAMES[i % len(NAMES)]
    subject = SUBJECTS[i % len(SUBJECTS)] + f" #{i}"
    reply_to = f"<m{i - 1}@example.org>" if thread_every and i % thread_every else ""
    return NewMessage(
        uid=i + 1,
        message_id=f"<m{i}@example.org>",
        in_reply_to=reply_to,
        references=[reply_to] if reply_to else [],
        from_name=name,
        from_addr=addr,
        to="Alice <alice@example.org>",
        subject=subject,
        date=BASE_TS + i * 60,
        flags=(SEEN,) if i % 3 else (),
        size=1000 + i,
        addresses=[(name, addr)],
    )


async def fill(cache: Cache, account: str, folder: str, n: int, *, chunk: int = 5000) -> int:
    f = await cache.upsert_folder(account, folder, special_use="inbox" if folder == "INBOX" else "")
    for start in range(0, n, chunk):
        await cache.add_messages(
            f.id, [new_message(i) for i in range(start, min(n, start + chunk))], uidvalidity=1
        )
    return f.id


async def make_cache(path: Path, n: int, account: str = "alice") -> Cache:
    cache = await Cache.open(path)
    t = time.perf_counter()
    await fill(cache, account, "INBOX", n)
    for name, use in (("Archive", "archive"), ("Sent", "sent"), ("Trash", "trash")):
        await cache.upsert_folder(account, name, special_use=use)
    _ = time.perf_counter() - t
    return cache
