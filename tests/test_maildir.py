"""The Maildir backend: parity with IMAP on the same mails, local operations, live changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chmail.client.backends.imap import ImapBackend
from chmail.client.backends.maildir import MaildirBackend
from chmail.client.cache import Cache, Message
from chmail.client.sync import Syncer
from chmail.devmail.seed import demo_messages, seed_imap, seed_maildir
from tests.fixtures.mailstack import MailStack, MailUser


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "cache.sqlite3")
    yield c
    await c.close()


def view(m: Message) -> tuple[object, ...]:
    return (m.message_id, m.subject, m.from_name, m.from_addr, m.to, m.date, m.in_reply_to,
            m.references, m.size > 0)  # fmt: skip


async def test_maildir_and_imap_show_the_same_mails(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """The same Dovecot mailbox read over IMAP and straight from its Maildir gives the same
    messages, headers, threads and search results."""
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(40, to=("U", mail_user.address)))  # fmt: skip
    imap = ImapBackend(
        "via-imap", host="127.0.0.1", port=mailstack.imap_port, user=mail_user.name,
        password=mail_user.password, security="plain",
    )  # fmt: skip
    md = MaildirBackend("via-maildir", mailstack.dovecot.maildir(mail_user.name))
    for b in (imap, md):
        s = Syncer(cache, b, b.account)
        await s.connect()
        await s.sync_all()
        await b.close()
    rows = {}
    for acc in ("via-imap", "via-maildir"):
        f = await cache.folder_by_name(acc, "INBOX")
        assert f is not None
        msgs = await cache.page(f.id, 0, 100)
        rows[acc] = sorted(view(m) for m in msgs)
        assert len(msgs) == 40
    assert rows["via-imap"] == rows["via-maildir"]
    a = await cache.search("회의", account="via-imap")
    b2 = await cache.search("회의", account="via-maildir")
    assert sorted(m.message_id for m in a) == sorted(m.message_id for m in b2)
    assert a
    roles = {f.special_use for f in await cache.folders("via-maildir")}
    assert {"inbox", "sent", "drafts", "trash"} <= roles


async def test_local_operations_keep_uids(tmp_path: Path, cache: Cache) -> None:
    """Flags, move, copy, append and expunge on a Maildir keep UIDs stable and sync back."""
    root = tmp_path / "Maildir"
    seed_maildir(root, demo_messages(6), seen_every=0)
    md = MaildirBackend("m", root)
    await md.connect()
    await md.create_folder("Archive")
    s = Syncer(cache, md, "m")
    await s.connect()
    await s.sync_all()
    inbox = await cache.folder_by_name("m", "INBOX")
    assert inbox is not None
    first = (await cache.page(inbox.id, 0, 6, "date-asc"))[0]
    await s.set_flags(first.pk, add={"\\Seen", "\\Flagged"})
    assert (await md.flags("INBOX"))[first.uid] == {"\\Seen", "\\Flagged"}
    uids_before = await md.uids("INBOX")
    await s.move(first.pk, "Archive")
    moved = await cache.get(first.pk)
    assert moved is not None
    assert moved.folder == "Archive"
    assert moved.uid > 0
    assert moved.flagged
    assert await md.uids("INBOX") == [u for u in uids_before if u != first.uid]
    copied = await md.copy("Archive", [moved.uid], "INBOX")
    assert list(copied) == [moved.uid]
    new_uid = await md.append("INBOX", b"Subject: appended\r\n\r\nx\r\n", flags=["\\Seen"])
    assert new_uid is not None
    assert new_uid > max(uids_before)
    await md.expunge("INBOX", [new_uid])
    res = await s.sync_folder("INBOX")
    assert (res.new, res.removed) == (1, 0)  # the copy arrived; the appended one is gone
    assert await cache.count(inbox.id) == 6


async def test_maildir_wait_changes_sees_a_delivery(tmp_path: Path) -> None:
    """wait_changes() notices a new file in new/."""
    root = tmp_path / "Maildir"
    md = MaildirBackend("m", root)
    await md.connect()
    waiter = asyncio.create_task(md.wait_changes("INBOX", 10))
    for _ in range(20):  # deliver until the waiter (which snapshots first) reports a change
        seed_maildir(root, [b"Subject: hi\r\n\r\nx\r\n"])
        done, _ = await asyncio.wait({waiter}, timeout=0.5)
        if done:
            break
    assert await asyncio.wait_for(waiter, 15)
