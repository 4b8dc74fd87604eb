"""What the reader shows of a raw mail (pure): text, HTML as text, attachments, quoting."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from chmail.client.tui.attachments import save_all
from chmail.client.tui.mailview import parse, quote


def _mail() -> bytes:
    m = EmailMessage()
    m["From"] = "Bob <bob@example.org>"
    m["To"] = "alice@example.org"
    m["Subject"] = "Report"
    m["Date"] = "Sat, 21 Nov 2026 10:00:00 +0000"
    m.set_content("See the report.\nBob\n")
    m.add_attachment(b"%PDF-1.4 demo", maintype="application", subtype="pdf",
                     filename="../../etc/report.pdf")  # fmt: skip
    return bytes(m)


def test_text_headers_and_attachments() -> None:
    """Headers, the text part and the attachment (with a name that cannot climb out)."""
    view = parse(_mail())
    assert view.header("Subject") == "Report"
    assert "See the report." in view.text
    assert [a.filename for a in view.attachments] == ["report.pdf"]
    assert view.attachments[0].data == b"%PDF-1.4 demo"


def test_attachment_name_cannot_fake_its_extension() -> None:
    """A name using a right-to-left override to look like a PDF (``invoice<RLO>fdp.exe``
    reads ``invoiceexe.pdf``) is shown, and saved, with the override made visible as a
    plain character: it reads as the .exe it is."""
    m = EmailMessage()
    m["From"] = "x@example.org"
    m.set_content("see attached")
    m.add_attachment(b"MZ", maintype="application", subtype="octet-stream",
                     filename="invoice\u202efdp.exe")  # fmt: skip
    assert [a.filename for a in parse(bytes(m)).attachments] == ["invoice_fdp.exe"]


def test_html_only_mail_is_shown_as_text() -> None:
    """An HTML-only mail is converted to readable text."""
    m = EmailMessage()
    m["Subject"] = "Sale"
    m.set_content("<html><body><h1>20% off</h1><p>This <b>week</b> only.</p></body></html>",
                  subtype="html")  # fmt: skip
    view = parse(bytes(m))
    assert view.was_html
    assert "20% off" in view.text
    assert "<p>" not in view.text


def test_reply_quotes_the_text() -> None:
    """A reply quotes every line with '> ' under an attribution."""
    q = quote(parse(_mail()))
    assert "Bob <bob@example.org> wrote:" in q
    assert "> See the report." in q


def test_save_attachments_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S saves into the download folder; a second save gets a new name."""
    downloads = tmp_path / "dl"
    monkeypatch.setenv("XDG_DOWNLOAD_DIR", str(downloads))
    view = parse(_mail())
    assert "Saved 1 attachment" in save_all(view)
    save_all(view)
    assert sorted(p.name for p in downloads.iterdir()) == ["report (2).pdf", "report.pdf"]
    assert "no attachments" in save_all(None)
