"""End to end: chmail sends through the real CH server, aiosmtpd and Dovecot."""

from __future__ import annotations

import email
import email.policy
import imaplib
import time
from pathlib import Path

from chmail import headers
from chmail.client.backends.imap import ImapBackend
from chmail.client.cache import Cache
from chmail.client.outbox import Outbox, SmtpTarget
from chmail.client.sync import Syncer
from chmail.config import AccountConfig, ChAccountConfig
from tests.fixtures.chserver import RunningServer
from tests.fixtures.mailstack import MailStack, MailUser


async def test_send_stamps_delivers_and_files(
    mailstack: MailStack, mail_user: MailUser, mail_user2: MailUser, chserver: RunningServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A mail gets a port from the CH server, arrives in the recipient's INBOX with X-CH
    headers that Python's email package reads and headers.verify accepts, and is in Sent."""
    sender, rcpt = mail_user, mail_user2
    await chserver.add_user("alice", emails=[sender.address])
    link = chserver.link("alice")
    await link.start()
    cache = await Cache.open(tmp_path / "cache.sqlite3")
    acc = AccountConfig(
        name=sender.name, email=sender.address, display_name="Alice",
        ch=ChAccountConfig(server=chserver.address, login="alice"),
    )  # fmt: skip
    imap = ImapBackend(sender.name, host="127.0.0.1", port=mailstack.imap_port,
                       user=sender.name, password=sender.password, security="plain")  # fmt: skip
    syncer = Syncer(cache, imap, sender.name)
    try:
        await syncer.connect()
        await syncer.sync_all()
        box = Outbox(cache, acc, SmtpTarget("127.0.0.1", mailstack.smtp_port, "plain"),
                     allocator=link, sent_store=imap, timeout=10)  # fmt: skip
        mid = await box.send(to=[rcpt.address], subject="Let's chat", body="Press c to call me.")
        assert await box.flush() == 1
        item = await box.status(mid)
        assert item is not None
        assert (item.state, item.ch_status) == ("done", "stamped")
        await syncer.sync_all()
        sent = await cache.folder_by_use(sender.name, "sent")
        assert sent is not None
        copies = await cache.all_by_message_id(mid, sender.name)
        assert [c.folder for c in copies] == [sent.name]
        assert copies[0].has_ch
    finally:
        await imap.close()
        await cache.close()
        await link.close()

    # The recipient's side, read by an independent client and parser.
    conn = imaplib.IMAP4("127.0.0.1", mailstack.imap_port)
    conn.login(rcpt.name, rcpt.password)
    conn.select("INBOX")
    _, data = conn.fetch("1", "(BODY.PEEK[])")
    conn.logout()
    raw = data[0][1]  # type: ignore[index]
    msg = email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[arg-type]
    assert msg["Message-ID"] == mid
    assert msg["X-CH-Login"] == "alice"
    assert msg["X-CH-Host"] == "ch.test"
    port = int(msg["X-CH-Port"])
    parsed = headers.parse([(k, str(v)) for k, v in msg.items()])
    assert parsed is not None
    lease = chserver.server.pool.get(port)
    assert lease is not None
    reason = headers.verify(parsed, message_id=mid, key=chserver.server.key,
                            record=lease.record(), now=time.time())  # fmt: skip
    assert reason is None
    assert rcpt.address.lower() in lease.recipients
