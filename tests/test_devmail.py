"""The local mail stack: Dovecot + aiosmtpd → LMTP, and Maildir delivery without Dovecot."""

from __future__ import annotations

import asyncio
import imaplib
import mailbox
import poplib
from pathlib import Path

import aiosmtplib
import pytest

from chmail.devmail import lmtp
from chmail.devmail.smtp import DeliveryHandler, server_port, start_server
from tests.fixtures.mailstack import MailStack, MailUser

MAIL = (
    "From: a@example.org\r\nTo: {to}\r\nSubject: hello\r\nMessage-ID: <{mid}@example.org>\r\n"
    "X-CH-Port: 41001\r\n\r\n.leading dot line\r\nbody\r\n"
)


async def test_smtp_delivers_through_lmtp_into_imap(
    mailstack: MailStack, mail_user: MailUser
) -> None:
    """A mail sent to the relay arrives in the user's INBOX byte-identical (headers, dots)."""
    raw = MAIL.format(to=mail_user.address, mid="d1")
    await aiosmtplib.send(
        raw.encode(), sender="a@example.org", recipients=[mail_user.address],
        hostname="127.0.0.1", port=mailstack.smtp_port,
    )  # fmt: skip
    imap = imaplib.IMAP4("127.0.0.1", mailstack.imap_port)
    try:
        imap.login(mail_user.name, mail_user.password)
        imap.select("INBOX")
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        body = data[0][1]  # type: ignore[index]
        assert b"X-CH-Port: 41001\r\n" in body
        assert b"\r\n.leading dot line\r\n" in body
        typ, boxes = imap.list()
        names = b" ".join(boxes)  # type: ignore[arg-type]
        assert b"\\Sent" in names
        assert b"\\Drafts" in names
    finally:
        imap.logout()


async def test_unknown_user_is_refused(mailstack: MailStack) -> None:
    """Dovecot's 550 for an unknown user reaches the SMTP client."""
    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await aiosmtplib.send(
            MAIL.format(to="nobody-here@example.org", mid="d2").encode(),
            sender="a@example.org", recipients=["nobody-here@example.org"],
            hostname="127.0.0.1", port=mailstack.smtp_port,
        )  # fmt: skip
    assert info.value.code == 550


async def test_pop3_reads_what_lmtp_delivered(mailstack: MailStack, mail_user: MailUser) -> None:
    """POP3 on the same Dovecot lists the delivered mail with a UIDL."""
    res = await lmtp.deliver(
        mailstack.dovecot.lmtp_path, "a@example.org", [mail_user.address],
        MAIL.format(to=mail_user.address, mid="d3").encode(),
    )  # fmt: skip
    assert res[mail_user.address][0] == 250

    def read() -> list[bytes]:
        pop = poplib.POP3("127.0.0.1", mailstack.pop3_port)
        try:
            pop.user(mail_user.name)
            pop.pass_(mail_user.password)
            return pop.uidl()[1]  # type: ignore[return-value]
        finally:
            pop.quit()

    assert len(await asyncio.to_thread(read)) == 1


async def test_maildir_delivery_without_dovecot(tmp_path: Path) -> None:
    """With no Dovecot, the relay writes each recipient's Maildir directly."""
    handler = DeliveryHandler(mail_root=tmp_path)
    server = await start_server(handler)
    try:
        await aiosmtplib.send(
            MAIL.format(to="carol@localhost", mid="d4").encode(),
            sender="a@example.org", recipients=["carol@localhost", "dave@example.org"],
            hostname="127.0.0.1", port=server_port(server),
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    for user in ("carol", "dave"):
        box = mailbox.Maildir(tmp_path / user / "Maildir", create=False)
        assert len(box) == 1


def test_dot_stuffing() -> None:
    """LMTP DATA doubles leading dots and ends with CRLF.CRLF."""
    assert lmtp.dot_stuff(b"a\n.b\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"
