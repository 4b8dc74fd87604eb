"""Member CSV import: validate every row, report bad ones by line, import the rest.

Rules:

* Columns: ``email`` and ``name`` are required; ``consent``, ``login``, ``age_band``,
  ``job``, ``hobbies``, ``interests`` and ``lang`` are optional. An unknown column is
  refused (a typo in a header must not silently drop data).
* ``hobbies`` and ``interests`` hold several values separated by ``;`` (or ``,``).
* ``consent`` is yes/no (also true/false, 1/0); empty or absent means yes, since the
  list is the record of who agreed to be mailed.
* A member is identified by e-mail address (case-insensitive): importing the same file
  twice changes nothing; importing a changed row updates that member.
* Line numbers are the file's physical lines (1 is the header), so a spreadsheet user
  can find the row.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from chmail.errors import HeaderError, ShopError
from chmail.headers import check_login
from shop_publicity.models import MemberIn
from shop_publicity.store import Store

REQUIRED = ("email", "name")
OPTIONAL = ("consent", "login", "age_band", "job", "hobbies", "interests", "lang")
MAX_EMAIL = 254  # RFC 5321 4.5.3.1.3 (path) minus the angle brackets
MAX_TEXT = 200
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_TAG = re.compile(r"[a-z0-9][a-z0-9 _.-]{0,39}")
_LANG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_YES = {"", "y", "yes", "true", "1"}
_NO = {"n", "no", "false", "0"}


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    updated: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        return self.rows - len(self.bad) - self.added - self.updated

    def summary(self) -> str:
        text = (
            f"{self.rows} rows: {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {len(self.bad)} refused."
        )
        lines = [text] + [f"  line {line}: {why}" for line, why in self.bad]
        return "\n".join(lines)


def check_email(value: str) -> str:
    email = value.strip()
    if not email:
        raise ShopError("the e-mail address is empty")
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        raise ShopError(f"{email!r} is not an e-mail address like name@example.com")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def check_tag(value: str, what: str) -> str:
    tag = value.strip().lower()
    if not _TAG.fullmatch(tag):
        raise ShopError(
            f"{value.strip()!r} is not a valid {what}: use 1 to 40 letters, digits, spaces,"
            " '.', '_' or '-'"
        )
    return tag


def _text(value: str, what: str, limit: int = MAX_TEXT) -> str:
    text = value.strip()
    if _CONTROL.search(text):
        raise ShopError(f"the {what} holds a control character")
    if len(text) > limit:
        raise ShopError(f"the {what} is longer than {limit} characters")
    return text


def _list(value: str, what: str) -> tuple[str, ...]:
    parts = [p for p in re.split(r"[;,]", value) if p.strip()]
    return tuple(dict.fromkeys(check_tag(p, what) for p in parts))


def parse_row(row: dict[str, str]) -> MemberIn:
    """One CSV row to a MemberIn, or ShopError saying what is wrong with it."""
    email = check_email(row.get("email", ""))
    name = _text(row.get("name", ""), "name")
    if not name:
        raise ShopError("the name is empty")
    consent_raw = row.get("consent", "").strip().lower()
    if consent_raw not in _YES | _NO:
        raise ShopError(f"consent {row['consent']!r} is not yes or no")
    login = row.get("login", "").strip()
    if login:
        try:
            check_login(login)
        except HeaderError as exc:
            raise ShopError(str(exc).rstrip(".")) from None
    lang = row.get("lang", "").strip().lower() or "en"
    if not _LANG.fullmatch(lang):
        raise ShopError(f"language {lang!r} is not a code like en, ko or pt-BR")
    return MemberIn(
        email=email,
        name=name,
        consent=consent_raw in _YES,
        login=login,
        age_band=_text(row.get("age_band", ""), "age band", 32),
        job=_text(row.get("job", ""), "job", 64),
        hobbies=_list(row.get("hobbies", ""), "hobby"),
        interests=_list(row.get("interests", ""), "interest"),
        lang=lang,
    )


def parse_csv(text: str) -> tuple[list[MemberIn], list[tuple[int, str]], int]:
    """Validate a whole file: (good members, [(line, why)], data rows seen)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ShopError("The CSV file is empty; its first line must name the columns.") from None
    except csv.Error as exc:
        raise ShopError(f"Line 1 of the CSV file cannot be read: {exc}.") from exc
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise ShopError(
            f"Line 1 of the CSV file: {'; '.join(parts)}. Columns are: "
            f"{', '.join(REQUIRED + OPTIONAL)} (email and name required)."
        )
    if len(set(header)) != len(header):
        raise ShopError("Line 1 of the CSV file names a column twice.")
    good: list[MemberIn] = []
    bad: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    rows = 0
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows += 1
            bad.append((line, f"cannot be read as CSV ({exc})"))
            continue
        if not any(v.strip() for v in values):
            continue  # blank line
        rows += 1
        if len(values) != len(header):
            bad.append((line, f"has {len(values)} fields, the header has {len(header)}"))
            continue
        try:
            member = parse_row(dict(zip(header, values, strict=True)))
        except ShopError as exc:
            bad.append((line, str(exc)))
            continue
        key = member.email.lower()
        if key in seen:
            bad.append((line, f"{member.email} is already on line {seen[key]}"))
            continue
        seen[key] = line
        good.append(member)
    return good, bad, rows


async def import_csv(store: Store, path: str | Path) -> ImportReport:
    """Import ``path``: every good row is saved, every bad one reported by line."""
    try:
        raw = await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise ShopError(f"Cannot read {path}: {exc.strerror}.") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ShopError(
            f"{path} is not UTF-8 text (line {line}); save it as CSV UTF-8 and retry."
        ) from None
    good, bad, rows = parse_csv(text)
    added, updated = await store.upsert_members(good)
    return ImportReport(rows=rows, added=added, updated=updated, bad=bad)
