"""Fast, forgiving parsing of a mail's header block into what the cache keeps.

Sync parses tens of thousands of header blocks; ``email.parser`` costs about as much per
message as the whole IMAP fetch, so the common shapes take a fast path here and only odd
ones (quoted display names, comments, encoded words) go through the slower careful code.
Nothing here raises on malformed input: a header that cannot be read is left empty.
"""

from __future__ import annotations

import binascii
import calendar
import codecs
import email.utils
import functools
import quopri
import re

from chmail.client.cache_models import NewMessage

# The fields sync asks for (IMAP BODY.PEEK[HEADER.FIELDS (...)]).
SYNC_FIELDS = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "X-CH-Login", "X-CH-Port", "X-CH-Host", "X-CH-Sig", "X-CH-Context",
)  # fmt: skip
_CH_PREFIX = "x-ch-"

# Charset names mail uses that Python spells differently, or where a superset decodes
# what real senders actually wrote (Korean mail labelled euc-kr is often cp949).
CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "euc_kr": "cp949",
    "x-windows-949": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "iso-2022-jp": "iso2022_jp_2",  # a superset: senders put JIS X 0212 in "iso-2022-jp"
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
}

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"(\?=)\s+(=\?)")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_MSGID = re.compile(r"<[^<>\s]+>")
_SIMPLE_ADDR = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*$")


@functools.lru_cache(maxsize=256)
def codec_for(charset: str) -> str:
    """A Python codec name for a MIME charset (unknown ones fall back to UTF-8)."""
    name = charset.strip().strip('"').lower()
    name = name.split("*", 1)[0]  # RFC 2231 language suffix
    name = CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return "utf-8"


def decode_bytes(data: bytes, charset: str = "utf-8") -> str:
    """Decode text in ``charset``; undecodable bytes become U+FFFD, never an exception."""
    codec = codec_for(charset)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        if codec != "utf-8":
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return data.decode(codec, "replace")


def _decode_word(m: re.Match[bytes]) -> bytes:
    charset, enc, text = m.group(1).decode("ascii", "replace"), m.group(2), m.group(3)
    try:
        if enc in b"bB":
            raw = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        else:
            raw = quopri.decodestring(text.replace(b"_", b" "), header=True)
    except (binascii.Error, ValueError):
        return m.group(0)
    return decode_bytes(raw, charset).encode("utf-8", "surrogatepass")


def decode_header(value: bytes | str) -> str:
    """Unfold a raw header value and decode RFC 2047 encoded words (RFC 2047 6.2: white
    space between adjacent encoded words is dropped)."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"\n" in raw:
        raw = _FOLD.sub(b"", raw)
    if b"=?" not in raw and raw.isascii():
        return raw.decode("ascii").replace("\t", " ").strip()
    if b"=?" in raw:
        raw = _BETWEEN_WORDS.sub(rb"\1\2", raw)
        raw = _ENCODED_WORD.sub(_decode_word, raw)
    return raw.decode("utf-8", "replace").replace("\t", " ").strip()


_HEADER_LINE = re.compile(rb"^([!-9;-~]+)[ \t]*:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.M)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def split_header_block(block: bytes) -> list[tuple[str, bytes]]:
    """``(name, raw value)`` pairs of a header block in order (values still folded).

    Lines that are not ``name: value`` are skipped; a blank line ends the block."""
    m = _BLANK_LINE.search(block)
    if m is not None and block[: m.start()].strip():
        block = block[: m.start()]
    return [
        (k.decode("ascii"), v.rstrip(b"\r")) for k, v in _HEADER_LINE.findall(block.lstrip(b"\r\n"))
    ]


def addresses(value: str) -> list[tuple[str, str]]:
    """``(display name, address)`` pairs of an address header (already decoded)."""
    if not value:
        return []
    if "," not in value and '"' not in value and "(" not in value and "\\" not in value:
        m = _SIMPLE_ADDR.match(value)
        if m:
            return [(m.group(1), m.group(2).strip())]
        if ":" not in value and ";" not in value:
            return [("", value.strip())]
    if '"' not in value and "(" not in value and "\\" not in value:
        out = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            m = _SIMPLE_ADDR.match(part)
            if m:
                out.append((m.group(1), m.group(2).strip()))
            elif ":" in part or ";" in part:  # group syntax: the careful path
                return [(n, a) for n, a in email.utils.getaddresses([value]) if a or n]
            else:
                out.append(("", part))
        return out
    return [(n, a) for n, a in email.utils.getaddresses([value]) if a or n]


def format_addresses(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{n} <{a}>" if n else a for n, a in pairs)


_MONTH_NAMES = "jan feb mar apr may jun jul aug sep oct nov dec"
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES.split(), 1)}
_DATE = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
    r"\s+([+-])(\d{2})(\d{2})\b"
)


@functools.lru_cache(maxsize=4096)
def _midnight(year: str, mon: int, day: str) -> int | None:
    """Unix seconds of 00:00 UTC of a day (mail clusters by day: this is mostly a hit)."""
    try:
        return calendar.timegm((int(year), mon, int(day), 0, 0, 0, 0, 0, 0))
    except (ValueError, OverflowError):
        return None


def parse_date(value: str) -> int:
    """Unix seconds of an RFC 5322 date, 0 if unreadable."""
    m = _DATE.match(value)
    if m is not None:
        day, mname, year, hh, mm, ss, sign, oh, om = m.groups()
        mon = _MONTHS.get(mname.lower())
        base = _midnight(year, mon, day) if mon is not None else None
        if base is not None and int(hh) < 24 and int(mm) < 60:
            secs = base + int(hh) * 3600 + int(mm) * 60 + int(ss or 0)
            off = int(oh) * 3600 + int(om) * 60
            return secs - off if sign == "+" else secs + off
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return 0
        return int(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError, IndexError):
        return 0


def message_ids(value: str) -> list[str]:
    return _MSGID.findall(value)


def _ids(raw: bytes | None) -> list[str]:
    return _MSGID.findall(raw.decode("ascii", "replace")) if raw else []


def _text(raw: bytes) -> str:
    """decode_header with a fast path for the common plain-ASCII, unfolded value."""
    if b"=?" not in raw and b"\n" not in raw and raw.isascii():
        return raw.decode("ascii").strip()
    return decode_header(raw)


def _msgid(raw: bytes | None) -> str:
    if not raw:
        return ""
    if raw[:1] == b"<" and raw[-1:] == b">" and b" " not in raw and raw.count(b"<") == 1:
        return raw.decode("ascii", "replace")
    found = _ids(raw)
    return found[0] if found else ""


# The spellings of the fields sync asks for that real mail uses: a block made only of
# these (no folding, no duplicates, no body) takes header_fields' fast path.
_CANON: dict[bytes, bytes] = {}
for _n in (*SYNC_FIELDS, "Message-Id", "Message-id", "In-reply-to", "X-Ch-Login", "X-Ch-Port",
           "X-Ch-Host", "X-Ch-Sig", "X-Ch-Context", "CC"):  # fmt: skip
    for _v in (_n, _n.upper(), _n.lower()):
        _CANON[_v.encode()] = _n.lower().encode()
_CH_NAMES = frozenset(k for k in _CANON if k.lower().startswith(b"x-ch-"))


def header_fields(block: bytes) -> tuple[dict[bytes, bytes], list[tuple[str, str]]]:
    """The fields of a header block by lower-case name (first occurrence wins, values
    unfolded, still encoded) and the X-CH-* fields in order (name as written, value).

    Lines that are not ``name: value`` are skipped; a blank line after the first field
    ends the block (what follows is a body). The common shape (CRLF lines, known field
    names, ``Name: value``, no folding, no repeats) is split by C-level calls only; any
    other goes through the line-by-line loop."""
    if b"\n " in block or b"\n\t" in block:
        block = _FOLD.sub(b"", block)  # RFC 5322 2.2.3: unfolding drops the CRLF only
    body = block.rstrip(b"\r\n")
    if b"\r\n\r\n" in body or b"\r" in body[-1:]:
        return _header_fields_careful(block)
    lines = body.split(b"\r\n")
    if body.count(b"\n") != len(lines) - 1:  # a bare LF somewhere
        return _header_fields_careful(block)
    try:
        raw = dict(line.split(b": ", 1) for line in lines)
    except ValueError:  # a line without ": "
        return _header_fields_careful(block)
    if len(raw) != len(lines) or not raw.keys() <= _CANON.keys():
        return _header_fields_careful(block)
    fields = {_CANON[k]: v.rstrip(b" \t\r") for k, v in raw.items()}
    if len(fields) != len(raw):  # one field spelt two ways: first one wins
        return _header_fields_careful(block)
    ch: list[tuple[str, str]] = []
    if not _CH_NAMES.isdisjoint(raw):
        ch = [(k.decode(), v.decode("ascii", "replace")) for k, v in raw.items() if k in _CH_NAMES]
    return fields, ch


def _header_fields_careful(block: bytes) -> tuple[dict[bytes, bytes], list[tuple[str, str]]]:
    """header_fields for any shape of block: one pass over the lines."""
    if b"\n " in block or b"\n\t" in block:
        block = _FOLD.sub(b"", block)  # RFC 5322 2.2.3: unfolding drops the CRLF only
    lines = block.split(b"\r\n") if b"\r\n" in block else block.split(b"\n")
    fields: dict[bytes, bytes] = {}
    ch: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            if not line.strip() and fields:
                break  # the blank line: the body follows
            continue
        name = name.rstrip(b" \t").lower()
        if not name or name != name.strip() or b" " in name or b"\t" in name:
            continue
        value = value.strip(b" \t\r")
        if name.startswith(b"x-ch-"):
            ch.append((line.partition(b":")[0].rstrip(b" \t").decode("ascii", "replace"),
                       value.decode("ascii", "replace")))  # fmt: skip
        if name not in fields:
            fields[name] = value
    return fields, ch


# Address headers and dates repeat a lot in a mailbox (your own address in To, the same
# senders): their parsed forms are remembered, bounded.
_ADDR_CACHE: dict[bytes, tuple[list[tuple[str, str]], str]] = {}
_DAY_CACHE: dict[bytes, int | None] = {}
_CACHE_MAX = 8192


def _addrs(raw: bytes) -> tuple[list[tuple[str, str]], str]:
    """(pairs, display string) of an address header value; the pairs list is shared:
    callers must not mutate it."""
    hit = _ADDR_CACHE.get(raw)
    if hit is None:
        pairs = addresses(_text(raw))
        hit = (pairs, format_addresses(pairs) if pairs else "")
        if len(_ADDR_CACHE) >= _CACHE_MAX:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = hit
    return hit


_CANONICAL_DATE = re.compile(
    rb"[A-Za-z]{3}, ([0-9]{2} [A-Za-z]{3} [0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})"
)


def _day(day: bytes) -> int | None:
    """Unix seconds of 00:00 UTC of ``01 Nov 2026`` (remembered)."""
    base = _DAY_CACHE.get(day, -1)
    if base == -1:
        dd, mon, year = day.decode("ascii").split()
        month = _MONTHS.get(mon.lower())
        base = _midnight(year, month, dd) if month is not None else None
        if len(_DAY_CACHE) >= _CACHE_MAX:
            _DAY_CACHE.clear()
        _DAY_CACHE[day] = base
    return base


def _date(raw: bytes) -> int:
    """parse_date with a fast path for the canonical ``Sun, 01 Nov 2026 10:00:00 +0000``."""
    m = _CANONICAL_DATE.fullmatch(raw)
    if m is not None:
        day, hh, mm, ss, sign, zone = m.groups()
        base = _day(day)
        h, mi = int(hh), int(mm)
        if base is not None and h < 24 and mi < 60:
            secs = base + h * 3600 + mi * 60 + int(ss)
            z = int(zone)
            off = (z // 100) * 3600 + (z % 100) * 60
            return secs - off if sign == b"+" else secs + off
    return parse_date(raw.decode("ascii", "replace"))


def new_message(
    uid: int, block: bytes, flags: tuple[str, ...] = (), size: int = 0, date: int = 0
) -> NewMessage:
    """Build the cache's view of one message from its (possibly partial) header block."""
    fields, ch = header_fields(block)
    get = fields.get
    frm_raw, to_raw, cc_raw = get(b"from"), get(b"to"), get(b"cc")
    frm = _addrs(frm_raw)[0] if frm_raw else []
    to, to_text = _addrs(to_raw) if to_raw else ([], "")
    cc, cc_text = _addrs(cc_raw) if cc_raw else ([], "")
    from_name, from_addr = frm[0] if frm else ("", "")
    refs_raw = get(b"references")
    refs = _ids(refs_raw)[-50:] if refs_raw else []  # bounded: runaway References
    date_raw = get(b"date")
    subject = get(b"subject")
    return NewMessage(
        uid,
        _msgid(get(b"message-id")),
        _msgid(get(b"in-reply-to")),
        refs,
        from_name,
        from_addr,
        to_text,
        cc_text,
        _text(subject) if subject else "",
        (_date(date_raw) if date_raw else 0) or date,
        flags,
        size,
        ch,
        [*frm, *to, *cc],
    )
