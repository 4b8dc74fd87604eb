"""Pure helpers of the IMAP backend: response parsing, UID sets, mailbox name encoding.

No I/O here (``HeaderBatches`` only signals with an asyncio.Event); imap.py talks to the
server and hands these the lines aioimaplib collected (untagged data without its
``* NAME`` prefix, literals as bytearray, the tagged text last).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Set
from typing import Any

from chmail.client.backends.imap_headers import _split_flags, parse_one, sync_message
from chmail.client.cache_models import NewMessage
from chmail.client.gcpause import collector_paused
from chmail.client.mime_headers import new_message

log = logging.getLogger(__name__)

_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
# Dovecot's (and most servers') order of the items sync asks for: one match per message.
_SYNC_ATTRS = re.compile(rb"[0-9]+ FETCH \(UID ([0-9]+) FLAGS \(([^)]*)\) RFC822\.SIZE ([0-9]+) ")
_MODSEQ = re.compile(rb"MODSEQ \((\d+)\)")
_CODE_NUM = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_LIST = re.compile(rb'^\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.*)$')
_COPYUID = re.compile(rb"COPYUID \d+ ([0-9:,]+) ([0-9:,]+)")
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox(name: str) -> str:
    """A folder name as an IMAP argument: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    return quote(utf7_encode(name))


def utf7_encode(name: str) -> str:
    out, run = [], ""

    def flush() -> None:
        nonlocal run
        if run:
            b64 = base64.b64encode(run.encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            run = ""

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run += ch
    flush()
    return "".join(out)


def utf7_decode(name: str) -> str:
    def sub(m: re.Match[str]) -> str:
        body = m.group(1)
        if not body:
            return "&"
        data = body.replace(",", "/")
        try:
            return base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return m.group(0)

    return re.sub(r"&([A-Za-z0-9+,]*)-", sub, name)


def uid_set(uids: Iterable[int]) -> str:
    """Compact UID set: 1,2,3,7 -> 1:3,7."""
    out: list[str] = []
    run: list[int] = []
    for u in sorted(set(uids)):
        if run and u == run[-1] + 1:
            run.append(u)
            continue
        if run:
            out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [u]
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def expand_set(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.split(b","):
        a, _, b = part.partition(b":")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def parse_fetch(lines: list[Any]) -> list[tuple[bytes, bytes | None]]:
    """Split a FETCH response into (attribute text, first literal or None) per message."""
    out: list[tuple[bytes, bytes | None]] = []
    text: list[bytes] = []
    literal: bytes | None = None
    for item in lines[:-1]:  # the last element is the tagged completion text
        if type(item) is bytearray:
            if literal is None:
                literal = bytes(item)
            continue
        if item[:1].isdigit() and b" FETCH (" in item[:24]:
            if text:
                out.append((b" ".join(text), literal))
            text, literal = [item], None
        elif text:
            text.append(item)
    if text:
        out.append((b" ".join(text), literal))
    return out


def _flags(attrs: bytes) -> tuple[str, ...]:
    m = _FLAGS.search(attrs)
    return tuple(m.group(1).decode("ascii", "replace").split()) if m else ()


def _unquote_mailbox(raw: bytes) -> str:
    raw = raw.strip()
    if raw.startswith(b'"') and raw.endswith(b'"'):
        raw = raw[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return raw.decode("utf-8", "replace")


class Every(Set[int]):
    """Every UID (a ``1:*`` FETCH wants whatever comes); ``len`` is how many are expected."""

    def __init__(self, expected: int) -> None:
        self.expected = expected

    def __contains__(self, uid: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return self.expected


def parse_headers_response(lines: list[Any], wanted: Set[int]) -> list[NewMessage]:
    """The messages of a header FETCH. The cyclic garbage collector is paused meanwhile:
    a batch allocates tens of thousands of small acyclic objects, and its full passes
    over them are pure overhead (it runs again right after)."""
    with collector_paused():
        return _parse_headers(lines, wanted)


def _parse_headers(lines: list[Any], wanted: Set[int]) -> list[NewMessage]:
    out: list[NewMessage] = []
    for attrs, literal in parse_fetch(lines):
        m = _SYNC_ATTRS.match(attrs)
        if m is not None:
            uid, flags, size = int(m.group(1)), m.group(2), int(m.group(3))
            if uid in wanted:
                out.append(sync_message(uid, literal or b"", _split_flags(flags), size))
            continue
        m = _UID.search(attrs)
        if not m:
            continue
        uid = int(m.group(1))
        if uid not in wanted:
            continue
        s = _SIZE.search(attrs)
        out.append(new_message(uid, literal or b"", _flags(attrs), int(s.group(1)) if s else 0))
    return out


class HeaderBatches:
    """Collects the messages a streamed header FETCH hands over (``take``), in batches of
    ``size``; ``ready`` is set when one is full (the reader then pauses).

    Towards the end the batches halve (down to ``MIN_BATCH``): the last batch is stored
    after the FETCH ends, with nothing left to overlap it, so it is kept small."""

    MIN_BATCH = 256

    def __init__(self, wanted: Set[int], size: int) -> None:
        self.wanted = wanted
        self.size = size
        self.messages: list[NewMessage] = []
        self.ready = asyncio.Event()
        self._left = len(wanted)  # wanted messages not taken yet

    def take(self, uid: int, flags: bytes, size: int, block: bytes) -> bool:
        if uid in self.wanted:
            self.messages.append(parse_one(uid, flags, size, block))
            self._left -= 1
        n = len(self.messages)
        if n < self.size and (n < self._left or n < self.MIN_BATCH):
            return False
        self.ready.set()
        return True

    def drain(self) -> list[NewMessage]:
        out, self.messages = self.messages, []
        self.ready.clear()
        return out

    async def finish(self) -> AsyncIterator[list[NewMessage]]:
        """What is left once the FETCH is over."""
        if self.messages:
            yield self.drain()


def _copyuid(lines: list[Any]) -> dict[int, int]:
    for line in lines:
        if isinstance(line, bytes | bytearray):
            m = _COPYUID.search(bytes(line))
            if m:
                return dict(zip(expand_set(m.group(1)), expand_set(m.group(2)), strict=False))
    return {}


def _text(lines: list[Any]) -> str:
    for line in reversed(lines):
        if isinstance(line, bytes) and line.strip():
            return line.decode("utf-8", "replace").strip()
    return "no reason given"
