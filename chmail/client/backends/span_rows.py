"""A run of header FETCH items straight into cache rows: what the parse helper does.

A mailbox's header blocks come in a few shapes: the same fields in the same order, from
the same few mail programs. The first item of a shape is cut by ``SPAN_ITEM`` and read by
``sync_message`` (which checks the block is of the usual kind: CRLF lines ``Name: value``,
usual names, none twice, nothing folded); its shape then becomes one regex for the whole
item -- the FETCH line, each field line in that order, the blank line and the closing
parenthesis -- so each later item of that shape is one match that hands over every raw
value at once, instead of a match, a split per line and a dictionary built by hand. A
match counts only if it ends exactly where the item's literal says the block ends; any
other item takes the first way. The shape knows which group holds which field, so the
values go by group number (``Match.group(*picks)``, no dictionary) through the same
``decoded_values`` as ``sync_message``'s, and out come the rows ``cache_stage.rows`` would make of
``parse_child.parse_span``'s messages, and the same address pairs (tests hold them to it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from chmail.client.backends.imap_headers import (
    _CH,
    _NAME_VALUE,
    _USUAL,
    FIELD_ORDER,
    SPAN_ITEM,
    Decoded,
    _split_flags,
    decoded_values,
    parse_one,
)
from chmail.client.cache_stage import _flags_text, address_pairs, rows

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
# ``SPAN_ITEM`` made cheaper for the regex engine: a class of one excluded byte ([^)],
# [^\r]) is a tight loop, one of two ([^)\r\n]) a set lookup per byte. Same matches here:
# every item start already matched SPAN_ITEM in the reader, so the field list has no line
# break; and a value runs to its CRLF, a bare LF inside it included, as mime_headers
# reads it too (the tests hold the two ways to the same rows).
_HEAD = (
    rb"\* [0-9]+ FETCH \(UID ([0-9]+) FLAGS \(([^)]*)\) RFC822\.SIZE ([0-9]+) "
    rb"BODY\[HEADER\.FIELDS \([^)]*\)\] \{([0-9]+)\}\r\n"
)
MAX_SHAPES = 16  # a mailbox has a few; the oldest learned goes first


class _Shape(NamedTuple):
    """One learned field order: its whole-item regex and where its values are."""

    match: Callable[[bytes, int], re.Match[bytes] | None]
    picks: tuple[int, ...]  # the group of each of FIELD_ORDER's fields (an empty one if absent)
    ch: tuple[tuple[bytes, int], ...]  # the X-CH fields in block order, and their groups
    names: tuple[bytes, ...]  # the field names in block order


_shapes: list[_Shape] = []


def span_rows(span: bytes) -> tuple[list[Row], list[tuple[str, str]]]:
    """The cache rows (``cache_stage.COLS``) and address pairs of a run of whole FETCH
    items (cut by the stream reader at ``SPAN_ITEM``)."""
    out: list[Row] = []
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(span)
    while pos < end:
        stop = _by_shape(span, pos, out, pairs)
        if stop < 0:
            stop = _by_item(span, pos, out, pairs)
            if stop < 0:  # (the reader matched the same pattern: never, short of a bug)
                log.error("a chunk of the header FETCH is not of the shape it was cut at")
                break
        pos = stop
    return out, pairs


def _by_shape(span: bytes, pos: int, out: list[Row], pairs: list[tuple[str, str]]) -> int:
    """The item at ``pos`` by a learned shape; where it ends, or -1."""
    for match, picks, ch, _ in _shapes:
        m = match(span, pos)
        # the block (after "}\r\n", before ")\r\n") is exactly the literal
        if m is not None and m.end() - m.end(4) - 6 == int(m[4]):
            try:
                values = decoded_values(m.group(*picks), [(k, m[g]) for k, g in ch] if ch else [])
            except Exception:  # (a bug: the item is read the other way)
                log.exception("header block of UID %s unreadable by its shape", m[1])
                return -1
            out.append(_row(int(m[1]), m[2], int(m[3]), values))
            pairs += values[10]
            return m.end()
    return -1


def _by_item(span: bytes, pos: int, out: list[Row], pairs: list[tuple[str, str]]) -> int:
    """The item at ``pos`` cut by ``SPAN_ITEM`` and read by ``parse_one`` (its shape is
    learned); where it ends, or -1."""
    m = SPAN_ITEM.match(span, pos)
    if m is None:
        return -1
    start = m.end()
    stop = start + int(m[4])
    block = span[start:stop]
    msg = [parse_one(int(m[1]), m[2], int(m[3]), block)]
    out += rows(msg)
    pairs += address_pairs(msg)
    _learn(block)
    return stop + 3  # ")\r\n"


def _row(uid: int, flags: bytes, size: int, values: Decoded) -> Row:
    mid, irt, refs, from_name, from_addr, to, cc, subject, date, ch, _ = values
    return (
        uid, mid, irt, " ".join(refs), from_name, from_addr, to, cc, subject, date,
        _flags_text(_split_flags(flags)), size,
        "".join(f"{n}: {v}\n" for n, v in ch) if ch else "",
    )  # fmt: skip


def _learn(block: bytes) -> None:
    """Remember the shape of ``block`` if it is of the usual kind (``sync_message``'s
    conditions for its fast path) and new."""
    if block[-4:] != b"\r\n\r\n":
        return
    lines = block[:-4].split(b"\r\n")
    try:
        names = tuple(name for name, _ in map(_NAME_VALUE, lines))
    except ValueError:  # a line without ": "
        return
    n = len(lines) + 1
    if (
        len(set(names)) + 1 != n
        or block.count(b"\n") != n
        or block.count(b"\r") != n
        or not _USUAL.issuperset(names)
        or any(names == shape.names for shape in _shapes)
    ):
        return
    # group 5 on: each field's value in block order, then an empty one for absent fields
    fields = b"".join(re.escape(name) + rb": ([^\r]*)\r\n" for name in names)  # (see _HEAD)
    group = {name: 5 + i for i, name in enumerate(names)}
    empty = 5 + len(names)
    picks = tuple(group.get(name, empty) for name in FIELD_ORDER)
    ch = tuple((name, group[name]) for name in names if name in _CH)
    item = re.compile(_HEAD + fields + rb"\r\n\)\r\n()")
    _shapes.append(_Shape(item.match, picks, ch, names))
    if len(_shapes) > MAX_SHAPES:
        del _shapes[0]
