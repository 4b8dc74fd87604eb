"""The header block of a synced message into a NewMessage, fast for the usual shape.

A header sync parses tens of thousands of blocks (``BODY[HEADER.FIELDS (...)]``), and on
this path the parse is most of the client's work. A block of the usual shape — CRLF
lines ``Name: value`` with the usual spellings of the fields sync asks for, nothing
folded, nothing repeated — is split by one regex call and read field by field with the
cached helpers of mime_headers; any other block goes to ``mime_headers.new_message``,
which reads every shape (and is what this must agree with; see the tests).
"""

from __future__ import annotations

import re

from chmail.client.cache_models import NewMessage
from chmail.client.mime_headers import (
    SYNC_FIELDS,
    _addrs,
    _date,
    _ids,
    _msgid,
    _text,
    new_message,
)

# A whole line: name, ": ", value, CR (re.M: "$" is before the LF).
_LINE = re.compile(rb"^([!-9;-~]+): ([^\r\n]*)\r$", re.M)
_CH = frozenset(f.encode() for f in SYNC_FIELDS if f.lower().startswith("x-ch-"))
# The spellings this path reads; a block with any other field name takes the slow path.
_USUAL = frozenset(f.encode() for f in SYNC_FIELDS)


def sync_message(uid: int, block: bytes, flags: tuple[str, ...], size: int) -> NewMessage:
    """``mime_headers.new_message(uid, block, flags, size)``, faster for the usual shape."""
    pairs = _LINE.findall(block)
    # Every line but the final blank one matched, and the block ends there.
    if len(pairs) + 1 != block.count(b"\n") or block[-4:] != b"\r\n\r\n":
        return new_message(uid, block, flags, size)
    fields = dict(pairs)
    if len(fields) != len(pairs) or not fields.keys() <= _USUAL:
        return new_message(uid, block, flags, size)
    get = fields.get
    frm_raw, to_raw, cc_raw = get(b"From"), get(b"To"), get(b"Cc")
    frm = _addrs(frm_raw)[0] if frm_raw else []
    to, to_text = _addrs(to_raw) if to_raw else ([], "")
    cc, cc_text = _addrs(cc_raw) if cc_raw else ([], "")
    from_name, from_addr = frm[0] if frm else ("", "")
    refs_raw = get(b"References")
    date_raw = get(b"Date")
    subject = get(b"Subject")
    ch = []
    if not _CH.isdisjoint(fields):
        ch = [(k.decode(), v.rstrip(b" \t").decode("ascii", "replace"))
              for k, v in pairs if k in _CH]  # fmt: skip
    return NewMessage(
        uid,
        _msgid(get(b"Message-ID")),
        _msgid(get(b"In-Reply-To")),
        _ids(refs_raw)[-50:] if refs_raw else [],  # bounded: runaway References
        from_name,
        from_addr,
        to_text,
        cc_text,
        _text(subject) if subject else "",
        _date(date_raw) if date_raw else 0,
        flags,
        size,
        ch,
        [*frm, *to, *cc],
    )
