"""Drafts mirrored to a real Dovecot's Drafts folder: one copy per draft, the newest;
gone when sent or discarded; offline saves and deletions catch up later."""

from __future__ import annotations

import email
import email.policy
import imaplib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chmail.client.backends.imap import ImapBackend
from chmail.client.cache import Cache
from chmail.client.drafts import draft_mime
from chmail.client.outbox import Outbox, SmtpTarget
from chmail.client.sync import Syncer
from chmail.config import AccountConfig
from chmail.devmail.dovecot import Dovecot, free_port
from tests.fixtures.mailstack import MailStack, MailUser


@dataclass
class Draft:
    """What the TUI hands the engine (chmail.client.tui.api.Draft has these fields)."""

    to: str = ""
    cc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    attachments: list[str] = field(default_factory=list)
    draft_id: int | None = None


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "cache.sqlite3")
    yield c
    await c.close()


def _backend(stack: MailStack, user: MailUser) -> ImapBackend:
    return ImapBackend(
        user.name, host="127.0.0.1", port=stack.imap_port, user=user.name,
        password=user.password, security="plain", timeout=10,
    )  # fmt: skip


def _outbox(cache: Cache, user: MailUser, backend: ImapBackend) -> Outbox:
    acc = AccountConfig(name=user.name, email=user.address, display_name="Me")
    # Nothing is sent here: the SMTP port is a free one nobody listens on.
    return Outbox(cache, acc, SmtpTarget("127.0.0.1", free_port(), "plain"), sent_store=backend)


def server_drafts(stack: MailStack, user: MailUser) -> list[tuple[bytes, email.message.Message]]:
    """(flags, message) of everything in the server's Drafts, read by stdlib imaplib."""
    conn = imaplib.IMAP4("127.0.0.1", stack.imap_port)
    conn.login(user.name, user.password)
    conn.select("Drafts", readonly=True)
    _, data = conn.uid("SEARCH", "ALL")
    out = []
    for uid in data[0].split():
        _, got = conn.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
        meta, raw = got[0]
        out.append((meta, email.message_from_bytes(raw, policy=email.policy.default)))
    conn.logout()
    return out


async def test_saved_draft_has_one_newest_copy_then_none_when_sent(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """Each save replaces the server copy (\\Draft, newest text); deleting the draft
    (as after sending) removes the copy, and the synced Drafts folder follows."""
    b = _backend(mailstack, mail_user)
    await b.connect()
    box = _outbox(cache, mail_user, b)
    assert box.draft_copies is not None
    d = Draft(to="bo", subject="Plans", body="first words")  # unfinished: no valid address yet
    d.draft_id = await box.save_draft(d)
    await box.draft_copies.push_soon()
    copies = server_drafts(mailstack, mail_user)
    assert len(copies) == 1
    assert b"\\Draft" in copies[0][0]
    assert copies[0][1]["Subject"] == "Plans"
    assert copies[0][1]["To"] == "bo"
    d.to, d.body = "Bob <bob@example.org>", "second version, 한국어"
    await box.save_draft(d)
    await box.save_draft(d)  # a burst of autosaves: pushes coalesce, never overlap
    await box.draft_copies.push_soon()
    copies = server_drafts(mailstack, mail_user)
    assert len(copies) == 1
    assert "second version, 한국어" in copies[0][1].get_content()
    assert copies[0][1]["To"] == "Bob <bob@example.org>"
    syncer = Syncer(cache, b, mail_user.name)
    await syncer.sync_folders()
    await syncer.sync_folder("Drafts")
    drafts = await cache.folder_by_use(mail_user.name, "drafts")
    assert drafts is not None
    assert await cache.count(drafts.id) == 1
    await box.delete_draft(d.draft_id)
    assert server_drafts(mailstack, mail_user) == []
    assert await cache.count(drafts.id) == 0
    assert await box.drafts() == []
    await b.close()


async def test_offline_saves_and_deletions_catch_up(
    mailstack: MailStack, mail_user: MailUser, cache: Cache
) -> None:
    """Saved while the server is unreachable: the draft is kept locally and copied at
    the next push; a copy whose draft was dropped offline is deleted by the next sync."""
    b = _backend(mailstack, mail_user)
    box = _outbox(cache, mail_user, b)
    assert box.draft_copies is not None
    d = Draft(to="carol@example.org", subject="offline")
    d.draft_id = await box.save_draft(d)  # never connected: the copy waits
    await box.draft_copies.push_soon()
    assert await box.draft_copies.dirty()
    assert [x.fields["subject"] for x in await box.drafts()] == ["offline"]
    await b.connect()
    assert await box.draft_copies.push() == 1
    assert not await box.draft_copies.dirty()
    assert len(server_drafts(mailstack, mail_user)) == 1
    await b.close()  # offline again
    await box.delete_draft(d.draft_id)
    assert len(server_drafts(mailstack, mail_user)) == 1  # still there: queued
    assert [op.kind for op in await cache.pending_ops(mail_user.name)] == ["delete"]
    syncer = Syncer(cache, b, mail_user.name)
    await syncer.connect()
    await syncer.sync_all()  # pushes queued operations first
    assert server_drafts(mailstack, mail_user) == []
    await b.close()


def test_draft_mime_keeps_what_was_typed_safely() -> None:
    """An unfinished draft becomes a readable mail; typed line breaks never reach a header."""
    acc = AccountConfig(name="me", email="me@example.org", display_name="Me")
    raw = draft_mime(acc, "<d1@chmail>", {"to": "bob@\r\nBcc: evil@x", "subject": "a\nb",
                                          "body": "text"})  # fmt: skip
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "a b"
    assert msg["Message-ID"] == "<d1@chmail>"
    assert msg.get_content().strip() == "text"
    full = draft_mime(acc, "<d2@chmail>", {"to": "Bob <bob@example.org>", "subject": "s",
                                           "body": "b", "in_reply_to": "<p@x>"})  # fmt: skip
    msg = email.message_from_bytes(full, policy=email.policy.default)
    assert (msg["To"], msg["In-Reply-To"], msg["References"]) == (
        "Bob <bob@example.org>", "<p@x>", "<p@x>")  # fmt: skip


async def test_without_uidplus_a_draft_still_keeps_one_copy(tmp_path: Path) -> None:
    """Against a server without UIDPLUS (no APPENDUID), each save still leaves exactly one
    server copy, the newest (found by its Message-ID), and deleting the draft removes it."""
    dv = Dovecot(users={"nu": "nupw"}, ssl=False,
                 imap_capability="IMAP4rev1 SASL-IR LITERAL+ ENABLE IDLE SPECIAL-USE")  # fmt: skip
    dv.start()
    cache = await Cache.open(tmp_path / "cache.sqlite3")
    try:
        user = MailUser("nu", "nupw", MailStack(dv, None))  # type: ignore[arg-type]
        stack = user.stack
        b = _backend(stack, user)
        await b.connect()
        assert "UIDPLUS" not in b.capabilities
        box = _outbox(cache, user, b)
        assert box.draft_copies is not None
        d = Draft(to="bob@example.org", subject="v1", body="first")
        d.draft_id = await box.save_draft(d)
        await box.draft_copies.push_soon()
        assert [m["Subject"] for _, m in server_drafts(stack, user)] == ["v1"]
        for version in ("v2", "v3"):
            d.subject = version
            await box.save_draft(d)
            await box.draft_copies.push_soon()
            assert [m["Subject"] for _, m in server_drafts(stack, user)] == [version]
        await box.delete_draft(d.draft_id)
        assert server_drafts(stack, user) == []
        await b.close()
    finally:
        await cache.close()
        dv.cleanup()
