"""A realistic demo mailbox: threads, Korean and Japanese mail in their legacy charsets,
HTML, attachments, chat-linked mail; written into a Maildir or an IMAP account.

``demo_messages(n, to=...)`` is deterministic for a given ``seed``. Bulk loading into IMAP
uses MULTIAPPEND with LITERAL+ (RFC 3502, RFC 7888): one command, many literals, ~10,000
messages a second, where single APPENDs manage 150/s.
"""

from __future__ import annotations

import asyncio
import base64
import mailbox
import random
import ssl
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from chmail.errors import MailError

PEOPLE = [
    ("Bob Stone", "bob@example.org"),
    ("Carol Diaz", "carol@example.org"),
    ("김민수", "minsu.kim@example.kr"),
    ("이지은", "jieun@example.kr"),
    ("田中太郎", "tanaka@example.jp"),
    ("佐藤花子", "hanako@example.jp"),
    ("Mall Shop", "news@shop.example"),
    ("GitHub", "noreply@github.example"),
]
SUBJECTS = [
    "Quarterly report draft",
    "Lunch on Friday?",
    "Invoice #{n} for your order",
    "Re: project kickoff notes",
    "Trip photos",
    "Meeting moved to 3pm",
    "Your weekly digest",
    "Contract review — comments inside",
]
KO = [("회의 일정 안내", "내일 오후 3시에 회의실에서 뵙겠습니다.\n자료를 미리 확인해 주세요."),
      ("견적서 보내드립니다", "요청하신 견적서를 첨부합니다. 검토 부탁드립니다.")]  # fmt: skip
JA = [("会議の件について", "明日の会議は十時からです。\n資料をご確認ください。"),
      ("お見積もりのご送付", "ご依頼の見積書をお送りいたします。")]  # fmt: skip
_TEXT = (
    "please find the notes below and let me know what you think about the plan for "
    "next week budget schedule design review release customer feedback"
)
WORDS = _TEXT.split()


def _body(rng: random.Random) -> str:
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in
             range(rng.randint(2, 6))]  # fmt: skip
    return "Hi,\n\n" + "\n".join(lines) + "\n\nThanks\n"


def demo_messages(
    n: int = 60,
    *,
    to: tuple[str, str] = ("Alice", "alice@example.org"),
    seed: int = 7,
    start: float | None = None,
) -> list[bytes]:
    """``n`` varied messages to ``to``, oldest first, about an hour apart."""
    rng = random.Random(seed)
    t0 = (start or time.time()) - n * 3600
    out: list[bytes] = []
    sent_ids: list[tuple[str, str]] = []  # (message-id, subject) to reply to
    for i in range(n):
        name, addr = PEOPLE[rng.randrange(len(PEOPLE))]
        msg = EmailMessage()
        kind = i % 10
        charset = "utf-8"
        if addr.endswith(".kr") and kind in (1, 6):
            subject, text = KO[i % len(KO)]
            charset = "euc-kr"
        elif addr.endswith(".jp") and kind in (2, 7):
            subject, text = JA[i % len(JA)]
            charset = "iso-2022-jp"
        else:
            subject, text = rng.choice(SUBJECTS).format(n=1000 + i), _body(rng)
        if sent_ids and kind == 4:
            parent, psub = rng.choice(sent_ids)
            msg["In-Reply-To"] = parent
            msg["References"] = parent
            subject = psub if psub.lower().startswith("re:") else f"Re: {psub}"
        msg["From"] = f"{name} <{addr}>"
        msg["To"] = f"{to[0]} <{to[1]}>"
        msg["Subject"] = subject
        msg["Date"] = format_datetime(datetime.fromtimestamp(t0 + i * 3600, UTC))
        mid = make_msgid(idstring=f"demo{i}", domain=addr.split("@")[1])
        msg["Message-ID"] = mid
        sent_ids.append((mid, subject))
        if charset == "utf-8":
            msg.set_content(text)
        else:
            msg.set_content(text, charset=charset, cte="base64" if charset == "euc-kr" else "7bit")
        if kind == 3:
            para = text.replace("\n", "<br>")
            html = f"<html><body><h1>{subject}</h1><p>{para}</p></body></html>"
            msg.add_alternative(html, subtype="html")
        if kind == 5:
            msg.add_attachment(
                b"%PDF-1.4\n% demo\n" + bytes(rng.randrange(256) for _ in range(2000)),
                maintype="application", subtype="pdf", filename=f"report-{i}.pdf",
            )  # fmt: skip
        data = msg.as_bytes()
        if charset != "utf-8":
            # Real Korean/Japanese mailers label subjects in the legacy charset too.
            enc = subject.encode(charset)
            word = f"=?{charset}?B?{base64.b64encode(enc).decode()}?="
            head, sep, rest = data.partition(b"\n\n")
            lines = [
                b"Subject: " + word.encode() if ln.startswith(b"Subject:") else ln
                for ln in _unfold_lines(head)
            ]
            data = b"\n".join(lines) + sep + rest
        out.append(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return out


def _unfold_lines(head: bytes) -> list[bytes]:
    out: list[bytes] = []
    for ln in head.split(b"\n"):
        if ln[:1] in (b" ", b"\t") and out:
            out[-1] += b"\n" + ln
        else:
            out.append(ln)
    return out


def seed_maildir(path: str | Path, messages: Iterable[bytes], *, seen_every: int = 3) -> int:
    """Write messages into a Maildir (``cur/``, every ``seen_every``-th one read)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    box = mailbox.Maildir(str(path), create=True)
    n = 0
    for i, raw in enumerate(messages):
        m = mailbox.MaildirMessage(raw)
        m.set_subdir("cur")
        if seen_every and i % seen_every:
            m.set_flags("S")
        box.add(m)
        n += 1
    return n


def q(s: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def seed_imap(
    host: str,
    port: int,
    user: str,
    password: str,
    messages: Sequence[bytes],
    *,
    folder: str = "INBOX",
    tls: bool = False,
    chunk: int = 2000,
) -> int:
    """MULTIAPPEND ``messages`` into ``folder`` over a plain asyncio socket (LITERAL+)."""
    ctx = ssl.create_default_context() if tls else None
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    tag = 0

    async def command(line: bytes, literals: Sequence[bytes] = ()) -> bytes:
        nonlocal tag
        tag += 1
        t = f"s{tag}".encode()
        writer.write(t + b" " + line)
        for lit in literals:
            writer.write(b" {" + str(len(lit)).encode() + b"+}\r\n" + lit)
        writer.write(b"\r\n")
        while True:
            resp = await reader.readline()
            if not resp:
                raise MailError("The IMAP server closed the connection while seeding.")
            if resp.startswith(t + b" "):
                if not resp[len(t) + 1 :].startswith(b"OK"):
                    raise MailError(f"Seeding failed: {resp.decode(errors='replace').strip()}")
                return resp

    try:
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise MailError(f"Unexpected IMAP greeting: {greeting!r}")
        await command(f"LOGIN {q(user)} {q(password)}".encode())
        box = q(folder).encode()
        for i in range(0, len(messages), chunk):
            part = messages[i : i + chunk]
            # MULTIAPPEND: APPEND box {n+}\r\n<lit> {n+}\r\n<lit> ... (flags omitted)
            await command(b"APPEND " + box, part)
        await command(b"LOGOUT")
    finally:
        writer.close()
    return len(messages)
