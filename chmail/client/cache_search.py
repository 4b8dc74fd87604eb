"""Search (FTS5) and address completion over the client cache. SQL lives here and in cache.py.

Query language (what a user types into ``chmail search`` or the TUI's search box):

* plain words match as prefixes anywhere (subject, from, to/cc, body); all must match;
* ``"two words"`` is a phrase;
* ``from:``, ``to:``, ``subject:``, ``body:`` limit the next word to that field;
* ``is:unread``, ``is:read``, ``is:flagged``, ``has:chat`` filter without the index.
* Chinese, Japanese and Korean: the index holds each CJK character as a token of its own
  (``fts_text``), and a word with CJK characters is searched as the phrase of them, so
  ``会議`` is found inside ``明日の会議について`` (unicode61 alone sees one token there).

A user's words never reach FTS5 syntax unquoted: each term is one double-quoted string,
so ``AND``, ``NEAR``, ``*``, ``:`` or a stray quote are just text.

Results are newest first by cache row id (sync inserts in UID order, so row id follows
arrival). Ordering by rowid lets FTS5 stop after ``limit`` hits instead of ranking every
match: a common word over 100,000 messages costs no more than a rare one.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
import time
from collections import Counter
from typing import Any

import aiosqlite

from chmail.client.cache_models import Address

_COLUMNS = {"from": "sender", "to": "recipients", "cc": "recipients", "subject": "subject",
            "body": "body"}  # fmt: skip
_FILTERS = {
    "is:unread": "m.seen = 0",
    "is:read": "m.seen = 1",
    "is:flagged": "m.flags LIKE '%\\Flagged%'",
    "has:chat": "m.has_ch = 1",
    "has:ch": "m.has_ch = 1",
}
_REPLY = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|답장|회신|전달)\s*(\[\d+\])?\s*:\s*)+", re.I)


_REPLY_START = frozenset("rRfFaAwWsSvV답회전 \t")


def subject_key(subject: str) -> str:
    """Sort key of a subject: case-folded, without Re:/Fwd: prefixes."""
    if not subject or subject[0] not in _REPLY_START:
        return subject.strip().casefold()
    return _REPLY.sub("", subject).strip().casefold()


# Han (with extension A and compatibility), kana (and half-width katakana), Hangul syllables.
_CJK = re.compile(
    "([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uf900-\ufaff\uff66-\uff9f])"
)


def fts_text(text: str | None) -> str | None:
    """Text as the search index holds it: each CJK character set apart by spaces."""
    if not text or text.isascii():
        return text
    return _CJK.sub(r" \1 ", text)


def fts_query(query: str) -> tuple[str, list[str]]:
    """Split a user query into an FTS5 expression and SQL filter clauses."""
    try:
        words = shlex.split(query)
    except ValueError:  # an unbalanced quote: take the words as they are
        words = query.replace('"', " ").split()
    terms: list[str] = []
    filters: list[str] = []
    for word in words:
        low = word.lower()
        if low in _FILTERS:
            filters.append(_FILTERS[low])
            continue
        column = ""
        field, sep, rest = word.partition(":")
        if sep and field.lower() in _COLUMNS and rest:
            column, word = _COLUMNS[field.lower()], rest
        word = " ".join((fts_text(word) or "").split())
        if not word:
            continue
        quoted = '"' + word.replace('"', '""') + '"'
        # Prefix match for single words; phrases (and CJK words) match as written.
        term = quoted + ("*" if " " not in word else "")
        terms.append(f"{column} : {term}" if column else term)
    return " AND ".join(terms), filters


async def search_ids(
    db: aiosqlite.Connection,
    query: str,
    limit: int,
    *,
    account: str | None = None,
    folder_id: int | None = None,
) -> list[int]:
    expr, filters = fts_query(query)
    where = list(filters)
    params: list[Any] = []
    if account is not None:
        where.append("m.folder_id IN (SELECT id FROM folders WHERE account = ?)")
        params.append(account)
    if folder_id is not None:
        where.append("m.folder_id = ?")
        params.append(folder_id)
    cond = " AND ".join(where) or "1"
    if expr:
        # cond holds only the fixed clauses above; every value is a bound parameter.
        sql = (
            "SELECT m.id FROM (SELECT rowid AS rid FROM messages_fts WHERE messages_fts MATCH ?"  # noqa: S608
            f" ORDER BY rowid DESC) s JOIN messages m ON m.id = s.rid WHERE {cond}"
            " ORDER BY s.rid DESC LIMIT ?"
        )
        params = [expr, *params, limit]
    elif where:
        sql = f"SELECT m.id FROM messages m WHERE {cond} ORDER BY m.id DESC LIMIT ?"  # noqa: S608
        params = [*params, limit]
    else:
        return []
    async with db.execute(sql, params) as cur:
        return [r[0] for r in await cur.fetchall()]


_NOTE_SQL = (
    "INSERT INTO addresses (address, name, name_lc, uses, last_used) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (address) DO UPDATE SET uses = uses + excluded.uses,"
    " last_used = excluded.last_used,"
    " name = CASE WHEN excluded.name != '' THEN excluded.name ELSE name END,"
    " name_lc = CASE WHEN excluded.name != '' THEN excluded.name_lc ELSE name_lc END"
)


def note_pairs_sync(db: sqlite3.Connection, pairs: list[tuple[str, str]]) -> None:
    """Count addresses for completion (one row each), on the SQLite thread."""
    db.executemany(_NOTE_SQL, _aggregate(pairs, 1))


async def note_pairs(db: aiosqlite.Connection, pairs: list[tuple[str, str]], weight: int) -> None:
    await db.executemany(_NOTE_SQL, _aggregate(pairs, weight))


def _aggregate(pairs: list[tuple[str, str]], weight: int) -> list[tuple[str, str, str, int, int]]:
    counts = Counter(addr for _, addr in pairs)  # most addresses repeat: count them in C
    names: dict[str, str] = {}
    for name, addr in pairs:
        if name and addr not in names:
            names[addr] = name
    now = int(time.time())
    agg: dict[str, list[Any]] = {}
    for addr, n in counts.items():
        key = addr.strip().lower()
        if "@" not in key or len(key) > 254:
            continue
        row = agg.setdefault(key, ["", 0])
        name = names.get(addr, "").strip()
        if name and not row[0]:
            row[0] = name
        row[1] += n * weight
    return [(a, n, n.casefold(), u, now) for a, (n, u) in agg.items()]


async def addresses(db: aiosqlite.Connection, prefix: str, limit: int) -> list[Address]:
    p = prefix.strip().casefold()
    if not p:
        sql = "SELECT address, name, uses FROM addresses ORDER BY uses DESC LIMIT ?"
        params: list[Any] = [limit]
    else:
        hi = p + "\U0010ffff"
        sql = (
            "SELECT address, name, uses FROM addresses WHERE address >= ? AND address < ?"
            " UNION SELECT address, name, uses FROM addresses WHERE name_lc >= ? AND name_lc < ?"
            " ORDER BY uses DESC, address LIMIT ?"
        )
        params = [p, hi, p, hi, limit]
    async with db.execute(sql, params) as cur:
        return [Address(r[0], r[1], r[2]) for r in await cur.fetchall()]
