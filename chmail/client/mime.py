"""Turn a raw mail into what a reader shows: decoded headers, readable text, attachments.

Rules:

* ``parse()`` never raises. A part that cannot be decoded is shown as well as it can be
  and noted in ``defects``; the raw source is always kept (``Parsed.raw``).
* Text: the first text/plain part outside attachments; if there is none, the HTML part
  converted to readable text (links kept as footnotes). Charsets are read with the
  aliases of mime_headers.CHARSET_ALIASES (EUC-KR as CP949, Shift_JIS as CP932,
  ISO-2022-JP as its superset), undecodable bytes become U+FFFD.
* Attachments are listed with a safe file name; ``save_attachment`` never writes outside
  the chosen directory and never overwrites a file.
* The structure is read with the compat32 policy: it tolerates what the modern policy
  rejects and never re-folds a header (CVE-2024-6923 concerns the latter on output).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from chmail.client.mime_headers import addresses, decode_bytes, decode_header, split_header_block

log = logging.getLogger(__name__)

MAX_INDEXED_TEXT = 200_000  # characters of a body that go into the search index
_UNSAFE_NAME = re.compile(r"[^\w .,()+@-]", re.UNICODE)


@dataclass(frozen=True)
class Attachment:
    index: int  # position among the message's leaf parts (stable for save_attachment)
    filename: str
    content_type: str
    size: int
    inline: bool = False


@dataclass
class Parsed:
    raw: bytes
    subject: str = ""
    from_: str = ""
    to: str = ""
    cc: str = ""
    date: str = ""
    message_id: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # decoded, in order
    text: str = ""
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        low = name.lower()
        return next((v for n, v in self.headers if n.lower() == low), "")

    @property
    def raw_headers(self) -> list[tuple[str, str]]:
        """Undecoded ``(name, value)`` pairs (what chmail.headers.parse wants)."""
        head = self.raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        return [(n, v.decode("utf-8", "replace")) for n, v in split_header_block(head)]


def html_to_text(html: str) -> str:
    try:
        import html2text

        h = html2text.HTML2Text()
        h.body_width = 0
        h.ignore_images = True
        h.protect_links = True
        h.inline_links = False
        return str(h.handle(html)).strip() + "\n"
    except Exception as exc:  # html2text on hostile markup: fall back to stripping tags
        log.debug("html2text failed: %s", exc)
        return re.sub(r"<[^>]*>", "", html)


def _leaves(msg: email.message.Message) -> list[email.message.Message]:
    out: list[email.message.Message] = []
    stack = [msg]
    seen = 0
    while stack and seen < 10_000:  # bounded: a hostile nesting cannot run forever
        part = stack.pop()
        seen += 1
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(p for p in reversed(payload) if isinstance(p, email.message.Message))
            continue
        out.append(part)
    return out


def _part_text(part: email.message.Message, defects: list[str]) -> str:
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"undecodable part: {exc}")
        data = None
    if not isinstance(data, bytes):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    return decode_bytes(data, charset)


def _filename(part: email.message.Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    return decode_header(name) if name else ""


def parse(raw: bytes) -> Parsed:
    """Parse ``raw`` (a whole message). Never raises."""
    out = Parsed(raw=raw)
    try:
        _parse_into(out)
    except Exception as exc:  # the last line of defence: show the source as text
        log.debug("mime parse failed: %s", exc)
        out.defects.append(f"unreadable structure: {exc}")
        if not out.text:
            out.text = decode_bytes(raw.split(b"\r\n\r\n", 1)[-1], "utf-8")
    return out


def _parse_into(out: Parsed) -> None:
    raw = out.raw
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    out.headers = [(n, decode_header(v)) for n, v in split_header_block(head)]
    out.subject = out.header("subject")
    out.from_ = out.header("from")
    out.to = out.header("to")
    out.cc = out.header("cc")
    out.date = out.header("date")
    out.message_id = out.header("message-id")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out.defects.extend(type(d).__name__ for d in getattr(msg, "defects", []))
    text: str | None = None
    html: str | None = None
    for index, part in enumerate(_leaves(msg)):
        try:
            ctype = part.get_content_type()
        except Exception:
            ctype = "application/octet-stream"
        disp = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
        name = _filename(part)
        is_text = ctype in ("text/plain", "text/html")
        if disp == "attachment" or (name and not is_text) or not ctype.startswith("text/"):
            fname = name or f"part-{index}{_ext(ctype)}"
            out.attachments.append(
                Attachment(index, safe_name(fname), ctype, _size(part), inline=disp == "inline")
            )
            continue
        if ctype == "text/html":
            if html is None:
                html = _part_text(part, out.defects)
        elif text is None:
            text = _part_text(part, out.defects)
    out.html = html
    if text is not None and text.strip():
        out.text = text
    elif html is not None:
        out.text = html_to_text(html)
    else:
        out.text = text or ""


def _size(part: email.message.Message) -> int:
    try:
        data = part.get_payload(decode=True)
        return len(data) if isinstance(data, bytes) else 0
    except Exception:
        return 0


_EXT = {"text/plain": ".txt", "text/html": ".html", "application/pdf": ".pdf",
        "image/png": ".png", "image/jpeg": ".jpg", "message/rfc822": ".eml"}  # fmt: skip


def _ext(ctype: str) -> str:
    return _EXT.get(ctype, ".bin")


def safe_name(name: str) -> str:
    """A file name that cannot climb out of a directory or hide: no separators, no
    leading dots, no control characters, at most 200 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME.sub("_", base).strip(" .")
    return (base or "attachment")[:200]


def attachment_bytes(raw: bytes, index: int) -> bytes:
    """The decoded content of leaf part ``index`` (see Attachment.index)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    leaves = _leaves(msg)
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    part = leaves[index]
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822: the attached message itself
        return b"".join(p.as_bytes() for p in payload if isinstance(p, email.message.Message))
    return str(payload).encode("utf-8", "replace")


def save_attachment(raw: bytes, att: Attachment, directory: str | Path) -> Path:
    """Write ``att`` into ``directory`` under its safe name (``name (2).ext`` if taken)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stem, dot, ext = safe_name(att.filename).rpartition(".")
    if not dot:
        stem, ext = ext, ""
    target = folder / safe_name(att.filename)
    n = 2
    while target.exists():
        target = folder / (f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")
        n += 1
    with open(target, "xb") as fh:  # "x": never overwrite, even in a race
        fh.write(attachment_bytes(raw, att.index))
    return target


def sender_pairs(value: str) -> list[tuple[str, str]]:
    return addresses(value)
