"""Turn a raw RFC 5322 message into what the reader shows: headers, text, attachments.

Pure: no I/O, no Textual. HTML-only mails are shown as text (html2text); a text/plain
alternative is preferred when there is one. Everything a MailView holds for display is
safe to draw (safe_text.py: no control character reaches the terminal); ``raw`` is not.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser

import html2text

from chmail.client.mime import safe_name
from chmail.client.safe_text import block, one_line

SHOWN_HEADERS = ("From", "To", "Cc", "Date", "Subject")


@dataclass(frozen=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class MailView:
    headers: tuple[tuple[str, str], ...]
    text: str
    was_html: bool
    attachments: tuple[Attachment, ...]
    raw: bytes = field(repr=False)

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return ""


def html_to_text(html: str) -> str:
    conv = html2text.HTML2Text()
    conv.body_width = 0
    conv.ignore_images = True
    conv.unicode_snob = True
    return str(conv.handle(html)).strip() + "\n"


def _decode(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else content.decode("utf-8", "replace")


def parse(raw: bytes) -> MailView:
    """Parse ``raw``; never raises on a malformed mail (shows what it can)."""
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    headers = []
    for name in SHOWN_HEADERS:
        value = msg.get(name)
        if value is not None:
            headers.append((name, _clean(str(value))))
    for name, value in msg.items():
        if name.lower().startswith("x-ch-"):
            headers.append((name, _clean(str(value))))
    text, was_html = "", False
    body = msg.get_body(preferencelist=("plain", "html"))
    if body is not None:
        content = _decode(body)  # type: ignore[arg-type]
        if body.get_content_type() == "text/html":
            text, was_html = html_to_text(content), True
        else:
            text = content
    text = block(text)
    attachments = []
    for i, part in enumerate(msg.iter_attachments()):
        assert isinstance(part, EmailMessage)
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        name = part.get_filename() or f"attachment-{i + 1}"
        attachments.append(Attachment(i, safe_name(name), part.get_content_type(), len(data), data))
    return MailView(tuple(headers), text, was_html, tuple(attachments), raw)


def _clean(value: str) -> str:
    return one_line(re.sub(r"[\r\n\t]+", " ", value).strip())


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n //= 1024
    return f"{n} GiB"


def quote(view: MailView) -> str:
    """The body quoted for a reply, with an attribution line."""
    who = view.header("From") or "someone"
    date = view.header("Date")
    lines = view.text.rstrip("\n").splitlines() or [""]
    quoted = "\n".join("> " + line if line else ">" for line in lines)
    return f"\n\nOn {date}, {who} wrote:\n{quoted}\n" if date else f"\n\n{who} wrote:\n{quoted}\n"


def forward_body(view: MailView) -> str:
    head = "\n".join(f"{k}: {v}" for k, v in view.headers if not k.lower().startswith("x-ch"))
    return f"\n\n---------- Forwarded message ----------\n{head}\n\n{view.text}"
