"""MIME decoding: Korean and Japanese charsets, HTML, attachments, malformed mail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chmail.client import mime
from chmail.client.mime_headers import decode_header, new_message, parse_date

DATA = Path(__file__).parent / "data"


def test_euc_kr_mail_decodes() -> None:
    """An EUC-KR mail (base64 body, EUC-KR and ks_c_5601-1987 encoded words) reads right."""
    p = mime.parse((DATA / "korean-euc-kr.eml").read_bytes())
    assert p.subject == "회의 일정 안내"
    assert p.from_ == "김민수 <minsu@example.kr>"
    assert "회의실에서 뵙겠습니다" in p.text
    assert p.defects == []


def test_iso_2022_jp_mail_decodes_and_prefers_plain_text() -> None:
    """An ISO-2022-JP multipart/alternative mail shows its text part, decoded."""
    p = mime.parse((DATA / "japanese-iso-2022-jp.eml").read_bytes())
    assert p.subject == "会議の件について"
    assert p.from_.startswith("田中太郎")
    assert "明日の会議は十時からです。" in p.text
    assert p.html is not None
    assert "会議" in p.html
    assert p.attachments == []


def test_shift_jis_html_only_mail_and_its_attachment(tmp_path: Path) -> None:
    """A Shift_JIS HTML-only mail is shown as text; its RFC 2231-named PDF can be saved."""
    raw = (DATA / "japanese-shift-jis-html-attachment.eml").read_bytes()
    p = mime.parse(raw)
    assert p.subject == "見積"
    assert "お見積もり" in p.text
    assert "<h1>" not in p.text
    assert "https://shop.example/q" in p.text
    [att] = p.attachments
    assert (att.filename, att.content_type) == ("見積書.pdf", "application/pdf")
    saved = mime.save_attachment(raw, att, tmp_path)
    again = mime.save_attachment(raw, att, tmp_path)
    assert saved.read_bytes().startswith(b"%PDF-1.4")
    assert saved != again  # never overwritten
    assert again.name == "見積書 (2).pdf"


def test_malformed_mail_is_shown_not_crashed(tmp_path: Path) -> None:
    """Broken boundary, bad base64, unknown charsets and a hostile file name: no exception,
    text shown, and the attachment cannot escape the target directory."""
    raw = (DATA / "malformed.eml").read_bytes()
    p = mime.parse(raw)
    assert "café" in p.subject
    assert p.raw == raw
    [att] = p.attachments
    assert "/" not in att.filename
    assert not att.filename.startswith(".")
    saved = mime.save_attachment(raw, att, tmp_path)
    assert saved.parent == tmp_path
    odd = mime.parse(b"Subject: x\r\nNo colon line\r\nTo: y\r\n\r\nbody")
    assert odd.subject == "x"
    assert odd.text


def _cpython_email_data() -> list[Path]:
    import test

    folder = Path(os.path.dirname(test.__file__)) / "test_email" / "data"
    return sorted(folder.glob("msg_*.txt"))


def test_cpython_test_email_corpus_parses() -> None:
    """Every message of CPython's own test_email data (many malformed on purpose) parses,
    through the full reader and the sync header parser, without an exception."""
    files = _cpython_email_data()
    assert len(files) > 40, "CPython's test_email data is not shipped with this interpreter"
    for f in files:
        raw = f.read_bytes()
        p = mime.parse(raw)
        assert isinstance(p.text, str)
        for a in p.attachments:
            mime.attachment_bytes(raw, a.index)
        head = raw.split(b"\n\n", 1)[0]
        new_message(1, head)


def test_encoded_words_and_dates() -> None:
    """RFC 2047 words (adjacent ones joined), unknown charsets and odd dates never raise."""
    assert decode_header(b"=?utf-8?q?caf=C3=A9?= =?utf-8?b?7ZWc?=") == "café한"
    assert decode_header(b"=?x-unknown?B?!!?= plain").endswith("plain")
    assert parse_date("Mon, 16 Nov 2026 09:00:00 +0900") == 1794819600 - 9 * 3600
    assert parse_date("not a date") == 0
    assert parse_date("16 Nov 2026 09:00 -0000") > 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_without_exception(data: bytes) -> None:
    """Arbitrary bytes are a (bad) mail, never an exception."""
    mime.parse(data)
    new_message(1, data)


@pytest.mark.parametrize(
    ("raw", "subject"),
    [
        (b"Subject: =?utf-8?B?7ZWc6rWt?=\r\n\r\n", "한국"),
        (b"Subject: a\r\n b\r\n\r\n", "a b"),
        (b"Subject: \xed\x95\x9c 8bit\r\n\r\n", "한 8bit"),
    ],
)
def test_header_fast_path(raw: bytes, subject: str) -> None:
    """The sync header parser handles encoded, folded and raw 8-bit subjects."""
    assert new_message(1, raw).subject == subject
