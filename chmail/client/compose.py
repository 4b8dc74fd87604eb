"""Build an outgoing mail from what the user typed, safely, and stamp X-CH headers into it.

Rules:

* Nothing the user typed reaches a header unchecked: subject, display names and addresses
  are refused if they hold CR, LF, NUL or other control characters (CVE-2024-6923: this
  Python's email generator can turn an encoded newline into a real header). Addresses
  must look like ``local@domain`` with no spaces, quotes handled by the email package.
* Bcc goes into the envelope only, never into a header.
* A reply carries ``In-Reply-To: <parent>`` and ``References: <parent's references>
  <parent>`` (RFC 5322 3.6.4), trimmed to the last 20 ids.
* X-CH headers are added to the header block of the finished bytes, each value re-checked
  by chmail.headers (ChatLink.headers()).
"""

from __future__ import annotations

import mimetypes
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path

from chmail import headers
from chmail.errors import ValidationError

MAX_REFERENCES = 20
MAX_SUBJECT = 998  # RFC 5322 2.1.1 line length limit
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ADDR = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_MSGID = re.compile(r"<[!-;=?-~]{1,246}>")


@dataclass(frozen=True)
class Composed:
    raw: bytes
    message_id: str
    sender: str  # envelope sender
    recipients: list[str]  # envelope recipients: To + Cc + Bcc, deduplicated


def check_text(value: str, what: str) -> str:
    if _CONTROL.search(value.replace("\t", " ")):
        raise ValidationError(f"The {what} contains a line break or control character; remove it.")
    return value


def parse_recipient(text: str) -> tuple[str, str]:
    """``"Name <a@b>"`` or ``a@b`` -> (name, address), checked."""
    text = check_text(text.strip(), "address")
    m = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^<>]+)>\s*', text)
    name, addr = (m.group(1).strip(), m.group(2).strip()) if m else ("", text)
    if not _ADDR.fullmatch(addr):
        raise ValidationError(f"{addr!r} is not an e-mail address like name@example.org.")
    return name, addr


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for v in values:
        for part in _split(v):
            out.append(parse_recipient(part))
    return out


def _split(value: str) -> list[str]:
    """Split "a@b, Name <c@d>" on commas outside quotes."""
    parts, cur, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _header_address(name: str, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def compose(
    *,
    sender: str,
    sender_name: str = "",
    to: Sequence[str],
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    subject: str,
    body: str,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    attachments: Sequence[str | Path] = (),
    message_id: str | None = None,
    date: float | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> Composed:
    """The finished mail as bytes (CRLF), plus its envelope."""
    subject = check_text(subject, "subject")[:MAX_SUBJECT]
    sender_name = check_text(sender_name, "sender name")
    _, sender_addr = parse_recipient(sender)
    to_l, cc_l, bcc_l = _addresses(to), _addresses(cc), _addresses(bcc)
    if not (to_l or cc_l or bcc_l):
        raise ValidationError("The mail has no recipient; add one in To.")
    mid = message_id or make_msgid(domain=sender_addr.rpartition("@")[2] or "localhost")
    if not _MSGID.fullmatch(mid):
        raise ValidationError(f"{mid!r} is not a valid Message-ID.")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _header_address(sender_name, sender_addr)
    if to_l:
        msg["To"] = [_header_address(n, a) for n, a in to_l]
    if cc_l:
        msg["Cc"] = [_header_address(n, a) for n, a in cc_l]
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(date or time.time(), UTC))
    msg["Message-ID"] = mid
    if in_reply_to:
        if not _MSGID.fullmatch(in_reply_to):
            raise ValidationError(f"{in_reply_to!r} is not a valid Message-ID to reply to.")
        msg["In-Reply-To"] = in_reply_to
        refs = [r for r in references if _MSGID.fullmatch(r)]
        if in_reply_to not in refs:
            refs.append(in_reply_to)
        msg["References"] = " ".join(refs[-MAX_REFERENCES:])
    msg["MIME-Version"] = "1.0"
    msg["User-Agent"] = "chmail"
    for name, value in extra_headers:
        msg[check_text(name, "header name")] = check_text(value, "header value")
    msg.set_content(body if body.endswith("\n") else body + "\n", charset="utf-8", cte="8bit")
    for path in attachments:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ValidationError(f"Cannot attach {p}: {exc.strerror}.") from exc
        ctype, _ = mimetypes.guess_type(p.name)
        maintype, _, subtype = (ctype or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=p.name)
    raw = msg.as_bytes()
    seen: set[str] = set()
    rcpts = []
    for _, a in to_l + cc_l + bcc_l:
        if a.lower() not in seen:
            seen.add(a.lower())
            rcpts.append(a)
    return Composed(raw, mid, sender_addr, rcpts)


def stamp(raw: bytes, link: headers.ChatLink) -> bytes:
    """Insert the link's X-CH header lines at the end of the header block of ``raw``.

    Any X-CH header already there is removed first: only the CH server's signature counts."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    nl = b"\r\n" if sep == b"\r\n\r\n" else b"\n"
    lines = head.split(nl)
    kept: list[bytes] = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"x-ch-")
        if not skipping:
            kept.append(line)
    for name, value in link.headers():
        kept.append(f"{name}: {value}".encode("ascii"))
    return nl.join(kept) + sep + body


def reply_subject(subject: str) -> str:
    return subject if re.match(r"(?i)\s*re\s*:", subject) else f"Re: {subject}"
