"""The fast header path of sync (mime_headers.header_fields / new_message) against the
standard library's email package on the test data and CPython's test_email corpus."""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import email.utils
import os
from pathlib import Path

import pytest

from chmail.client import mime_headers as mh

DATA = Path(__file__).parent / "data"


def _corpus() -> list[Path]:
    from test import support  # shipped with CPython, like test_email's data

    folder = Path(os.path.dirname(support.__file__)).parent / "test_email" / "data"
    return sorted([*DATA.glob("*.eml"), *folder.glob("*.txt"), *folder.glob("*.eml")])


def _head(raw: bytes) -> bytes:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    cut = raw.find(b"\r\n\r\n")
    return raw[: cut + 4] if cut >= 0 else raw + b"\r\n\r\n"


def _norm(value: bytes) -> bytes:
    return b" ".join(value.split())


def _synthetic() -> list[bytes]:
    out = []
    for i in range(200):
        out.append(
            (f"From: Bob Stone <bob.{i}@example.org>\r\nTo: Alice <alice@example.org>\r\n"
             f"Subject: Budget report #{i}\r\nDate: Sun, 0{i % 9 + 1} Nov 2026 "
             f"{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} {'+' if i % 2 else '-'}0{i % 10}30\r\n"
             f"Message-ID: <b{i}@bench.example>\r\nReferences: <a{i}@x> <b{i}@x>\r\n\r\n").encode()
        )  # fmt: skip
    return out


def test_fields_match_email_package_on_corpus() -> None:
    """Every field sync keeps has the same (unfolded) raw value as email.parser finds."""
    files = _corpus()
    assert len(files) > 40
    checked = 0
    for path in files:
        head = _head(path.read_bytes())
        msg = email.message_from_bytes(head, policy=email.policy.compat32)
        if any(isinstance(d, email.errors.MissingHeaderBodySeparatorDefect) for d in msg.defects):
            continue  # email stops at the first odd line; we skip it and read on
        fields, _ = mh.header_fields(head)
        for name in mh.SYNC_FIELDS:
            got = msg.get(name)
            if got is None:
                assert name.lower().encode() not in fields, (path.name, name)
                continue
            want = str(got).encode("ascii", "surrogateescape")
            assert _norm(fields[name.lower().encode()]) == _norm(want), (path.name, name)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("source", ["corpus", "synthetic"])
def test_fast_path_agrees_with_careful_path(source: str) -> None:
    """The C-level split gives exactly what the line-by-line loop gives."""
    heads = [_head(p.read_bytes()) for p in _corpus()] if source == "corpus" else _synthetic()
    for head in heads:
        assert mh.header_fields(head) == mh._header_fields_careful(head)


def test_decoded_values_match_email_package() -> None:
    """Subject, From, To and Date decode as email.header / email.utils decode them (white
    space normalised); Message-ID and References keep the ids in order."""
    heads = _synthetic() + [_head(p.read_bytes()) for p in sorted(DATA.glob("*.eml"))]
    for head in heads:
        msg = email.message_from_bytes(head, policy=email.policy.compat32)
        m = mh.new_message(1, head)
        subject = msg.get("Subject")
        if subject is not None:
            try:
                want = str(email.header.make_header(email.header.decode_header(subject)))
            except (LookupError, UnicodeError):
                want = m.subject  # documented difference: email raises, we read it as UTF-8
            assert " ".join(m.subject.split()) == " ".join(want.split())
        if msg.get("Date"):
            assert m.date == int(email.utils.parsedate_to_datetime(msg["Date"]).timestamp())
        if msg.get("Message-ID"):
            assert m.message_id == msg["Message-ID"].strip()
        name, addr = email.utils.parseaddr(str(msg.get("From", "")))
        if addr and "=?" not in name:  # where email gives up ("" ), we keep the raw text
            assert (m.from_name, m.from_addr) == (name, addr)
        refs = msg.get("References")
        if refs:
            assert m.references == refs.split()


def test_date_fast_path_matches_parse_date() -> None:
    """The fixed-width date path gives parse_date's result, odd values fall back to it."""
    for value in [
        b"Sun, 01 Nov 2026 23:59:59 +0930",
        b"Mon, 29 Feb 2028 00:00:00 -1200",
        b"Tue, 31 Feb 2026 10:00:00 +0000",  # no such day: parse_date decides
        b"Sun, 01 Nov 2026 24:00:00 +0000",
        b"Sun, 1 Nov 2026 10:00:00 +0000",
        b"Xyz, 01 Abc 2026 10:00:00 +0000",
        b"garbage",
    ]:
        assert mh._date(value) == mh.parse_date(value.decode())
