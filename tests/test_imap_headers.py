"""The fast header path of IMAP sync (backends/imap_headers.sync_message) against the
careful one (mime_headers.new_message) on the test data, CPython's test_email corpus,
synthetic blocks and random damage to them."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chmail.client.backends import imap_headers
from chmail.client.cache_models import NewMessage
from chmail.client.mime_headers import SYNC_FIELDS, new_message

DATA = Path(__file__).parent / "data"


def _corpus() -> list[Path]:
    from test import support  # shipped with CPython, like test_email's data

    folder = Path(os.path.dirname(support.__file__)).parent / "test_email" / "data"
    return sorted([*DATA.glob("*.eml"), *folder.glob("*.txt"), *folder.glob("*.eml")])


def _as_fetched(raw: bytes) -> bytes:
    """What ``BODY[HEADER.FIELDS (...)]`` returns for a mail: the synced fields in mail
    order (folded lines kept), then a blank line."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = raw.split(b"\r\n\r\n", 1)[0]
    wanted = {f.lower().encode() for f in SYNC_FIELDS}
    out: list[bytes] = []
    keep = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        keep = line.partition(b":")[0].strip().lower() in wanted
        if keep:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out) + b"\r\n"


@functools.cache
def _synthetic(n: int = 300) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        name = rng.choice(["Bob Stone", "=?utf-8?b?6rmA66+87IiY?=", '"Stone, Bob"', ""])
        subject = rng.choice(["Budget #", "=?iso-2022-jp?b?GyRCMnFERBsoQg==?= #", "Re: x"])
        zone = rng.choice(["+", "-"]) + f"0{i % 10}30"
        frm = f"{name} <bob.{i}@example.org>" if name else f"bob.{i}@example.org"
        lines = [
            f"From: {frm}", "To: Alice <alice@example.org>, carol@example.org",
            f"Subject: {subject}{i}",
            f"Date: Sun, 0{i % 9 + 1} Nov 2026 {i % 24:02d}:{i % 60:02d}:07 {zone}",
            f"Message-ID: <b{i}@bench.example>",
        ]  # fmt: skip
        if i % 3 == 0:
            lines.append(f"References: <a{i}@x> <b{i - 1}@bench.example>")
            lines.append(f"In-Reply-To: <b{i - 1}@bench.example>")
        if i % 5 == 0:
            lines += ["X-CH-Login: bob", f"X-CH-Port: {40000 + i}", "X-CH-Sig: abc=="]
        if i % 7 == 0:
            lines.append("Cc: dave@example.org ")
        rng.shuffle(lines)
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


def test_agrees_with_the_careful_path_on_corpus_and_synthetic() -> None:
    """sync_message gives exactly new_message's result on real and synthetic blocks."""
    for block in [_as_fetched(p.read_bytes()) for p in _corpus()] + _synthetic():
        got = imap_headers.sync_message(3, block, ("\\Seen",), 99)
        assert got == new_message(3, block, ("\\Seen",), 99), block


def test_usual_blocks_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of the usual shape (any order, encoded words, X-CH fields) never fall back."""
    fallbacks: list[bytes] = []

    def careful(uid: int, block: bytes, *args: object) -> NewMessage:
        fallbacks.append(block)
        return new_message(uid, block, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(imap_headers, "new_message", careful)
    for block in _synthetic():
        imap_headers.sync_message(1, block, (), 0)
    assert fallbacks == []
    imap_headers.sync_message(1, b"Subject: a\r\n b\r\n\r\n", (), 0)  # folded
    assert len(fallbacks) == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 299), st.integers(0, 400), st.binary(max_size=6))
def test_damaged_blocks_agree_or_fall_back(which: int, at: int, junk: bytes) -> None:
    """A block with bytes inserted anywhere still parses, exactly as the careful path does."""
    block = _synthetic()[which]
    at = min(at, len(block))
    bad = block[:at] + junk + block[at:]
    assert imap_headers.sync_message(1, bad, (), 0) == new_message(1, bad, (), 0)
