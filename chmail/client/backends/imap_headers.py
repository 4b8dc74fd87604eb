"""The header block of a synced message into a NewMessage, fast for the usual shape.

A header sync parses tens of thousands of blocks (``BODY[HEADER.FIELDS (...)]``), and on
this path the parse is most of the client's work. A block of the usual shape — CRLF
lines ``Name: value`` with the usual spellings of the fields sync asks for, nothing
folded, nothing repeated — is split by C-level calls and read field by field with the
cached helpers of mime_headers; any other block goes to ``mime_headers.new_message``,
which reads every shape (and is what this must agree with; see the tests).
"""

from __future__ import annotations

import functools
import logging
import re
from operator import methodcaller

from chmail.client.cache_models import NewMessage
from chmail.client.mime_headers import (
    _ADDR_CACHE,
    _CACHE_MAX,
    SYNC_FIELDS,
    _date,
    _ids,
    _msgid,
    _text,
    addresses,
    format_addresses,
    new_message,
)

log = logging.getLogger(__name__)

# One whole FETCH item of a header sync up to its literal, in the order Dovecot (and most
# servers) answer the items asked for: (uid, flags, size, literal size). A run of such
# items, each closed by ")\r\n" right after its literal, is what the stream reader hands
# the parse helper (imap_protocol.py, parse_child.py).
SPAN_ITEM = re.compile(
    rb"\* [0-9]+ FETCH \(UID ([0-9]+) FLAGS \(([^)]*)\) RFC822\.SIZE ([0-9]+) "
    rb"BODY\[HEADER\.FIELDS \([^)\r\n]*\)\] \{([0-9]+)\}\r\n"
)
_NAME_VALUE = methodcaller("split", b": ", 1)
_CH = frozenset(f.encode() for f in SYNC_FIELDS if f.lower().startswith("x-ch-"))
# The spellings this path reads; a block with any other field name takes the slow path.
_USUAL = frozenset(f.encode() for f in SYNC_FIELDS)


def parse_one(uid: int, flags: bytes, size: int, block: bytes) -> NewMessage:
    """One message of a streamed header FETCH (a parser bug must not stall the reader, nor
    lose the message: it is stored with what the FETCH line says)."""
    try:
        return sync_message(uid, block, _split_flags(flags), size)
    except Exception:
        log.exception("header block of UID %s unreadable", uid)
        return NewMessage(uid, flags=_split_flags(flags), size=size)


@functools.lru_cache(maxsize=256)  # few flag sets per mailbox
def _split_flags(raw: bytes) -> tuple[str, ...]:
    return tuple(raw.decode("ascii", "replace").split())


def sync_message(uid: int, block: bytes, flags: tuple[str, ...], size: int) -> NewMessage:
    """``mime_headers.new_message(uid, block, flags, size)``, faster for the usual shape."""
    # Every line "Name: value" (usual names, none twice), CRLF only, nothing folded, and
    # the block ends at its blank line. Splitting at CRLF and ": " runs in C (memchr), a
    # regex would step through every byte of the values.
    if block[-4:] != b"\r\n\r\n":
        return new_message(uid, block, flags, size)
    lines = block[:-4].split(b"\r\n")
    n = len(lines) + 1
    try:
        fields = dict(map(_NAME_VALUE, lines))
    except ValueError:  # a line without ": "
        return new_message(uid, block, flags, size)
    if (
        len(fields) + 1 != n
        or block.count(b"\n") != n
        or block.count(b"\r") != n
        or not fields.keys() <= _USUAL
    ):
        return new_message(uid, block, flags, size)
    mid, irt, refs, from_name, from_addr, to, cc, subject, date, ch, people = decoded(fields)
    return NewMessage(
        uid, mid, irt, refs, from_name, from_addr, to, cc, subject, date, flags, size, ch, people
    )


Decoded = tuple[
    str, str, list[str], str, str, str, str, str, int, list[tuple[str, str]],
    list[tuple[str, str]],
]  # fmt: skip


def decoded(fields: dict[bytes, bytes]) -> Decoded:
    """What the cache keeps of a usual-shape block's fields (raw values by their usual
    names, in block order): message_id, in_reply_to, references, from_name, from_addr,
    to, cc, subject, date, ch_headers, addresses (``NewMessage``'s fields but uid, flags
    and size)."""
    get = fields.get
    ch = []
    if not _CH.isdisjoint(fields):
        ch = [(k, v) for k, v in fields.items() if k in _CH]
    return decoded_values(tuple(map(get, FIELD_ORDER)), ch)


# The fields ``decoded_values`` takes, in its order (a learned shape picks them by group).
FIELD_ORDER = (
    b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"In-Reply-To", b"References"
)  # fmt: skip


def decoded_values(raw: tuple[bytes | None, ...], ch_raw: list[tuple[bytes, bytes]]) -> Decoded:
    """``decoded`` of the raw values of ``FIELD_ORDER``'s fields (None or empty: absent)
    and of the X-CH fields, in block order."""
    frm_raw, to_raw, cc_raw, subject, date_raw, mid, irt, refs_raw = raw
    frm = _people(frm_raw)[0] if frm_raw else []
    to, to_text = _people(to_raw) if to_raw else ([], "")
    cc, cc_text = _people(cc_raw) if cc_raw else ([], "")
    from_name, from_addr = frm[0] if frm else ("", "")
    ch = [(k.decode(), v.rstrip(b" \t").decode("ascii", "replace")) for k, v in ch_raw]
    return (
        _one_id(mid) if mid else "",
        _one_id(irt) if irt else "",
        _ids(refs_raw)[-50:] if refs_raw else [],  # bounded: runaway References
        from_name,
        from_addr,
        to_text,
        cc_text,
        _plain(subject) if subject else "",
        _date(date_raw) if date_raw else 0,
        ch,
        [*frm, *to, *cc],
    )


# ``b"x" in raw`` on bytes first tries ``x`` as an integer and raises and catches a
# TypeError inside: ten times the cost of ``find``, which these use instead.


def _plain(raw: bytes) -> str:
    """``mime_headers._text`` (decoding RFC 2047 words), cheap for plain ASCII."""
    if raw.isascii() and raw.find(b"=?") < 0:
        return raw.decode("ascii").strip()
    return _text(raw)


def _one_id(raw: bytes) -> str:
    """``mime_headers._msgid``: the first ``<id>`` of a Message-ID / In-Reply-To value."""
    if raw[:1] == b"<" and raw[-1:] == b">" and raw.find(b" ") < 0 and raw.count(b"<") == 1:
        return raw.decode("ascii", "replace")
    return _msgid(raw)


def _people(raw: bytes) -> tuple[list[tuple[str, str]], str]:
    """``mime_headers._addrs`` (same shared cache), decoding with ``_plain``."""
    hit = _ADDR_CACHE.get(raw)
    if hit is None:
        one = _one_person(raw)
        if one is not None:
            hit = ([one], f"{one[0]} <{one[1]}>" if one[0] else one[1])
        else:
            pairs = addresses(_plain(raw))
            hit = (pairs, format_addresses(pairs) if pairs else "")
        if len(_ADDR_CACHE) >= _CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = hit
    return hit


_NAMES: dict[bytes, str] = {}  # display names repeat more than whole addresses do


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        if len(_NAMES) >= _CACHE_MAX:
            _NAMES.clear()
        name = _NAMES[raw] = _plain(raw)
    return name


_SPECIALS = frozenset(',"()\\<>:;')


def _one_person(raw: bytes) -> tuple[str, str] | None:
    """``Name <addr>`` (or ``<addr>``) without quotes, comments or commas, split before
    decoding; None for any other shape (``mime_headers.addresses`` reads those)."""
    start = raw.find(b"<")
    if (
        start < 0
        or raw[-1:] != b">"
        or raw.find(b"<", start + 1) >= 0
        or raw.find(b">") != len(raw) - 1
    ):
        return None
    if raw.find(b",") >= 0 or raw.find(b'"') >= 0 or raw.find(b"(") >= 0 or raw.find(b"\\") >= 0:
        return None
    if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:  # (not from sync_message: no CR/LF)
        return None
    addr_raw = raw[start + 1 : -1]
    if not addr_raw.isascii() or addr_raw.find(b"=?") >= 0 or addr_raw.find(b"\t") >= 0:
        return None
    name = _name(raw[:start]) if start else ""
    if not _SPECIALS.isdisjoint(name):
        return None
    return name, addr_raw.decode("ascii").strip()
