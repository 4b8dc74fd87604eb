"""IMAP sync against a real Dovecot: seeding, incremental sync, flags, IDLE, restarts."""

from __future__ import annotations

import asyncio
import imaplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chmail.client.backends.imap import ImapBackend
from chmail.client.cache import Cache
from chmail.client.cache_models import StagedBatch
from chmail.client.sync import Syncer
from chmail.devmail import lmtp
from chmail.devmail.dovecot import Dovecot
from chmail.devmail.seed import demo_messages, seed_imap
from chmail.errors import MailError
from tests.fixtures.mailstack import MailStack, MailUser


def backend(stack: MailStack, user: MailUser, **kw: object) -> ImapBackend:
    return ImapBackend(
        user.name, host="127.0.0.1", port=stack.imap_port, user=user.name,
        password=user.password, security="plain", timeout=10, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "cache.sqlite3")
    yield c
    await c.close()


def imap(stack: MailStack, user: MailUser) -> imaplib.IMAP4:
    """An independent client (stdlib imaplib) to look at or change the server side."""
    conn = imaplib.IMAP4("127.0.0.1", stack.imap_port)
    conn.login(user.name, user.password)
    conn.select("INBOX")
    return conn


async def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll an async-or-sync condition until true, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)  # polling a condition with a deadline


async def test_sync_seeded_mailbox(mailstack: MailStack, mail_user: MailUser, cache: Cache) -> None:
    """A seeded mailbox syncs completely: folders with roles, decoded headers, threads."""
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(120, to=("U", mail_user.address)))  # fmt: skip
    b = backend(mailstack, mail_user)
    s = Syncer(cache, b, mail_user.name)
    await s.connect()
    seen: list[tuple[int, int, str]] = []
    results = await s.sync_all(progress=lambda d, t, f: seen.append((d, t, f)))
    await b.close()
    inbox = await cache.folder_by_name(mail_user.name, "INBOX")
    assert inbox is not None
    assert await cache.count(inbox.id) == 120
    roles = {f.special_use for f in await cache.folders(mail_user.name)}
    assert {"inbox", "sent", "drafts", "trash"} <= roles
    assert "INBOX" in {r.folder for r in results}
    assert (120, 120, "INBOX") in seen
    subjects = {m.subject for m in await cache.page(inbox.id, 0, 120)}
    assert "회의 일정 안내" in subjects  # EUC-KR encoded word
    assert "会議の件について" in subjects  # ISO-2022-JP encoded word
    await cache.index_pending()  # thread ids come with the pass after the store
    replies = [m for m in await cache.page(inbox.id, 0, 120) if m.in_reply_to]
    assert replies
    thread = await cache.thread(replies[0].thread_id)
    assert len(thread) >= 2
    assert await cache.search("会議の件について")


async def test_one_fetch_of_many_messages_does_not_hang(
    mailstack: MailStack, mail_user: MailUser
) -> None:
    """One FETCH answering 2,500 messages completes (stock aioimaplib recursed and hung)."""
    msgs = [f"Subject: n{i}\r\nMessage-ID: <n{i}@x>\r\n\r\nx\r\n".encode() for i in range(2500)]
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password, msgs)
    b = backend(mailstack, mail_user, batch=10_000)
    await b.connect()
    uids = await b.uids("INBOX")
    got = [
        m
        async for batch in b.headers("INBOX", uids)
        for m in (batch.messages() if isinstance(batch, StagedBatch) else batch)
    ]
    flags = await b.flags("INBOX")
    await b.close()
    assert [m.subject for m in got] == [f"n{i}" for i in range(2500)]
    assert len(flags) == 2500


async def test_incremental_sync_and_expunge(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """A second sync fetches only new UIDs and drops messages expunged on the server."""
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(10, to=("U", mail_user.address)))  # fmt: skip
    b = backend(mailstack, mail_user)
    s = Syncer(cache, b, mail_user.name)
    await s.connect()
    first = await s.sync_folder("INBOX")
    assert first.new == 10
    other = imap(mailstack, mail_user)
    other.store("1:2", "+FLAGS", "\\Deleted")
    other.expunge()
    other.logout()
    await lmtp.deliver(mailstack.dovecot.lmtp_path, "x@example.org", [mail_user.address],
                       b"Subject: late\r\nMessage-ID: <late@x>\r\n\r\nhi\r\n")  # fmt: skip
    second = await s.sync_folder("INBOX")
    await b.close()
    assert (second.new, second.removed) == (1, 2)
    inbox = await cache.folder_by_name(mail_user.name, "INBOX")
    assert inbox is not None
    assert await cache.count(inbox.id) == 9


async def test_flags_round_trip_both_ways(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """Flags set in chmail reach the server; flags set elsewhere reach the cache."""
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(3, to=("U", mail_user.address)))  # fmt: skip
    b = backend(mailstack, mail_user)
    s = Syncer(cache, b, mail_user.name)
    await s.connect()
    await s.sync_all()
    inbox = await cache.folder_by_name(mail_user.name, "INBOX")
    assert inbox is not None
    first = await cache.by_uid(inbox.id, 1)
    assert first is not None
    await s.set_flags(first.pk, add={"\\Flagged", "\\Seen"})
    other = imap(mailstack, mail_user)
    _, data = other.uid("FETCH", "1", "(FLAGS)")
    assert b"\\Flagged" in data[0]  # type: ignore[operator]
    other.uid("STORE", "2", "+FLAGS", "(\\Answered)")
    other.uid("STORE", "1", "-FLAGS", "(\\Flagged)")
    other.logout()
    res = await s.sync_folder("INBOX")
    await b.close()
    assert res.flags_changed == 2
    m1, m2 = await cache.by_uid(inbox.id, 1), await cache.by_uid(inbox.id, 2)
    assert m1 is not None
    assert m2 is not None
    assert (m1.flagged, m1.seen, m2.answered) == (False, True, True)
    assert await cache.pending_ops(mail_user.name) == []


async def test_move_and_delete_reach_the_server(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """move() and delete() apply locally at once and on the server, UIDs kept right."""
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(4, to=("U", mail_user.address)))  # fmt: skip
    b = backend(mailstack, mail_user)
    s = Syncer(cache, b, mail_user.name)
    await s.connect()
    await s.sync_all()
    inbox = await cache.folder_by_name(mail_user.name, "INBOX")
    archive = await cache.folder_by_name(mail_user.name, "Archive")
    assert inbox is not None
    assert archive is not None
    m1 = await cache.by_uid(inbox.id, 1)
    m2 = await cache.by_uid(inbox.id, 2)
    assert m1 is not None
    assert m2 is not None
    await s.move(m1.pk, "Archive")
    moved = await cache.get(m1.pk)
    assert moved is not None
    assert (moved.folder, moved.uid) == ("Archive", 1)  # COPYUID gave the new UID
    await s.delete(m2.pk)  # to Trash
    m3 = await cache.by_uid(inbox.id, 3)
    assert m3 is not None
    await s.copy(m3.pk, "Archive")
    drafts_uid = await s.append("Drafts", b"Subject: draft\r\n\r\nx\r\n", ["\\Draft"])
    assert drafts_uid == 1
    await s.sync_all()
    await b.close()
    assert await cache.count(inbox.id) == 2
    assert await cache.count(archive.id) == 2
    trash = await cache.folder_by_use(mail_user.name, "trash")
    assert trash is not None
    assert await cache.count(trash.id) == 1
    body = await Syncer(cache, b, mail_user.name).cache.body(m1.pk)
    assert body is None  # bodies only on demand


async def test_bodies_on_demand(mailstack: MailStack, mail_user: MailUser, cache: Cache) -> None:
    """open_body fetches once, caches the source, and the body text becomes searchable."""
    raw = b"Subject: s\r\nMessage-ID: <b1@x>\r\n\r\nthe zanzibar plan\r\n"
    await lmtp.deliver(mailstack.dovecot.lmtp_path, "x@example.org", [mail_user.address], raw)
    b = backend(mailstack, mail_user)
    s = Syncer(cache, b, mail_user.name)
    await s.connect()
    await s.sync_all()
    assert await cache.search("zanzibar") == []
    msg = await cache.by_message_id("<b1@x>")
    assert msg is not None
    got = await s.open_body(msg.pk)
    await b.close()
    assert b"zanzibar" in got
    assert await s.open_body(msg.pk) == got  # from the cache, connection closed
    assert [m.pk for m in await cache.search("zanzibar")] == [msg.pk]


async def test_uidvalidity_change_resyncs(
    mailstack: MailStack, dovecot: Dovecot, mail_user: MailUser, cache: Cache
) -> None:
    """When the server's UIDVALIDITY changes, the folder is emptied and fetched again."""
    await seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                    demo_messages(5, to=("U", mail_user.address)), folder="Archive")  # fmt: skip
    b = backend(mailstack, mail_user)
    s = Syncer(cache, b, mail_user.name)
    await s.connect()
    await s.sync_all()
    archive = await cache.folder_by_name(mail_user.name, "Archive")
    assert archive is not None
    old = archive.uidvalidity
    await b.close()
    dovecot.doveadm("mailbox", "update", "--uid-validity", str(old + 1000), "-u",
                    mail_user.name, "Archive")  # fmt: skip
    await s.connect()
    res = await s.sync_folder("Archive")
    await b.close()
    assert res.reset
    assert res.new == 5
    after = await cache.folder(archive.id)
    assert after is not None
    assert (after.uidvalidity, after.total) == (old + 1000, 5)


async def test_idle_brings_new_mail(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """With run() live, a delivered mail reaches the cache through IDLE, without polling."""
    s = Syncer(cache, backend(mailstack, mail_user), mail_user.name,
               watcher=backend(mailstack, mail_user), interval=3600)  # fmt: skip
    changed = asyncio.Event()
    s.on_change(lambda _folder_id: changed.set())
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    try:
        await wait_for(lambda: cache.folder_by_name(mail_user.name, "INBOX"))
        await wait_for(lambda: s.online)
        changed.clear()
        await lmtp.deliver(mailstack.dovecot.lmtp_path, "x@example.org", [mail_user.address],
                           b"Subject: pushed\r\nMessage-ID: <p1@x>\r\n\r\nhi\r\n")  # fmt: skip
        await asyncio.wait_for(changed.wait(), 10)  # Dovecot pushes after 0.5 s
        assert await cache.by_message_id("<p1@x>") is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.mark.slow
async def test_survives_dovecot_restart(
    mailstack: MailStack, dovecot: Dovecot, mail_user: MailUser, cache: Cache
) -> None:
    """After Dovecot restarts, run() reconnects by itself and resumes syncing."""
    s = Syncer(cache, backend(mailstack, mail_user), mail_user.name,
               watcher=backend(mailstack, mail_user), interval=3600)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    try:
        await wait_for(lambda: s.online and s.status == "online")
        await wait_for(lambda: cache.folder_by_name(mail_user.name, "INBOX"))
        await asyncio.to_thread(dovecot.restart)
        await lmtp.deliver(dovecot.lmtp_path, "x@example.org", [mail_user.address],
                           b"Subject: after\r\nMessage-ID: <r1@x>\r\n\r\nhi\r\n")  # fmt: skip
        await wait_for(lambda: cache.by_message_id("<r1@x>"), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_oversized_literal_is_refused(mailstack: MailStack, mail_user: MailUser) -> None:
    """A literal over the cap drops the connection with a clear error, never buffers it."""
    await lmtp.deliver(mailstack.dovecot.lmtp_path, "x@example.org", [mail_user.address],
                       b"Subject: big\r\n\r\n" + b"x" * 50_000 + b"\r\n")  # fmt: skip
    b = backend(mailstack, mail_user)
    await b.connect()
    assert b._client is not None
    b._client.protocol.max_literal = 10_000
    with pytest.raises(MailError, match="limit"):
        await b.body("INBOX", 1)
    await b.close()


async def test_plain_imap_refused_off_localhost() -> None:
    """Plain-text IMAP to a remote host is refused before any connection."""
    from chmail.errors import ConfigError

    with pytest.raises(ConfigError, match="plain"):
        ImapBackend("a", host="mail.example.org", port=143, user="u", password="p",
                    security="plain")  # fmt: skip


async def test_tls_with_self_signed_ca(
    mailstack: MailStack, dovecot: Dovecot, mail_user: MailUser
) -> None:
    """IMAPS works when the server's certificate is trusted through a CA file."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.load_verify_locations(str(dovecot.cert_path))
    b = ImapBackend(mail_user.name, host="127.0.0.1", port=dovecot.imaps_port,
                    user=mail_user.name, password=mail_user.password, security="tls",
                    ssl_context=ctx)  # fmt: skip
    await b.connect()
    names = [f.name for f in await b.folders()]
    await b.close()
    assert "INBOX" in names


async def test_starttls_upgrades_and_checks_the_certificate(
    mailstack: MailStack, dovecot: Dovecot, mail_user: MailUser, cache: Cache
) -> None:
    """STARTTLS on the plain IMAP port upgrades before login and syncs; a certificate the
    client does not trust stops the login (no fallback to plain text)."""
    import ssl

    from chmail.errors import ConnectionLost

    ctx = ssl.create_default_context()
    ctx.load_verify_locations(str(dovecot.cert_path))
    b = ImapBackend(mail_user.name, host="127.0.0.1", port=mailstack.imap_port,
                    user=mail_user.name, password=mail_user.password, security="starttls",
                    ssl_context=ctx)  # fmt: skip
    await b.connect()
    proto = b._proto()
    assert proto.transport.get_extra_info("ssl_object") is not None
    await b.append("INBOX", b"Subject: over tls\r\nMessage-ID: <tls1@x>\r\n\r\nx\r\n")
    res = await Syncer(cache, b, mail_user.name).sync_folder("INBOX")
    await b.close()
    assert res.new == 1
    untrusting = ImapBackend(
        mail_user.name, host="127.0.0.1", port=mailstack.imap_port, user=mail_user.name,
        password=mail_user.password, security="starttls", ssl_context=ssl.create_default_context(),
    )  # fmt: skip
    with pytest.raises(ConnectionLost):
        await untrusting.connect()


async def test_non_ascii_folder_names(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """A Korean folder name round-trips through modified UTF-7 and syncs like any other."""
    b = backend(mailstack, mail_user)
    await b.connect()
    await b.create_folder("받은편지함/업무")
    await b.append("받은편지함/업무", b"Subject: in a Korean folder\r\n\r\nx\r\n")
    s = Syncer(cache, b, mail_user.name)
    await s.sync_all()
    await b.close()
    f = await cache.folder_by_name(mail_user.name, "받은편지함/업무")
    assert f is not None
    assert f.total == 1


async def test_folder_deleted_elsewhere_goes(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """A folder deleted by another client leaves the cache at the next sync."""
    b = backend(mailstack, mail_user)
    await b.connect()
    await b.create_folder("Projects")
    s = Syncer(cache, b, mail_user.name)
    await s.sync_all()
    assert await cache.folder_by_name(mail_user.name, "Projects") is not None
    other = imap(mailstack, mail_user)
    other.delete("Projects")
    other.logout()
    await s.sync_all()
    await b.close()
    assert await cache.folder_by_name(mail_user.name, "Projects") is None
