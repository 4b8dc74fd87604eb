"""The outbox against real SMTP servers: flaky ones, refusing ones, down ones; composing."""

from __future__ import annotations

import asyncio
import email
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from chmail.client import cache_outbox as store
from chmail.client.backends.maildir import MaildirBackend
from chmail.client.cache import Cache
from chmail.client.compose import compose
from chmail.client.outbox import Outbox, SmtpTarget
from chmail.config import AccountConfig, ChAccountConfig
from chmail.devmail.dovecot import free_port
from chmail.devmail.smtp import server_port, start_server
from chmail.errors import ValidationError

ACCOUNT = AccountConfig(name="me", email="me@example.org", display_name="Me Myself")


@dataclass
class FlakyHandler:
    """Accepts some mails; answers 4xx, drops the connection or hangs for others.
    Never stores a mail it did not answer 250 for."""

    seed: int = 1
    fail_rate: float = 0.3
    hang_rate: float = 0.01
    permanent: str = ""  # e.g. "554 5.7.1 ..." refuses everything
    got: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, bytes] = field(default_factory=dict)
    envelopes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rng.random() < self.fail_rate / 6:
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.permanent:
            return self.permanent
        roll = self.rng.random()
        if roll < self.hang_rate:
            await asyncio.Event().wait()  # never answers; the client times out
        if roll < self.fail_rate / 2:
            return "451 4.3.0 Temporary local problem"
        if roll < self.fail_rate:
            assert server.transport is not None
            server.transport.abort()  # the connection drops before any reply
            return "250 never seen"
        data = envelope.original_content or b""
        assert isinstance(data, bytes)
        mid = email.message_from_bytes(data)["Message-ID"]
        self.got[mid] += 1
        self.bodies[mid] = data
        self.envelopes[mid] = list(envelope.rcpt_tos)
        return "250 OK queued"


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "cache.sqlite3")
    yield c
    await c.close()


async def smtp_server(handler: Any) -> tuple[asyncio.Server, int]:
    server = await start_server(handler)
    return server, server_port(server)


def outbox(cache: Cache, port: int, **kw: Any) -> Outbox:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_max", 0.01)
    return Outbox(cache, kw.pop("account", ACCOUNT), SmtpTarget("127.0.0.1", port, "plain"), **kw)


async def drain(box: Outbox, rounds: int = 500) -> None:
    """Flush until nothing is left to do (bounded)."""
    for _ in range(rounds):
        await box.flush()
        if not await store.items(box.cache, box.account.name, store.ACTIVE):
            return
        await asyncio.sleep(0.01)  # let backoff deadlines pass
    raise AssertionError("the outbox did not drain")


@pytest.mark.slow
async def test_thousand_mails_through_a_flaky_server(cache: Cache) -> None:
    """1,000 mails through drops, 4xx and hangs: every one arrives exactly once."""
    handler = FlakyHandler(seed=42, hang_rate=0.004)
    server, port = await smtp_server(handler)
    box = outbox(cache, port, timeout=1.0)
    try:
        ids = []
        for i in range(1000):
            raw = (f"From: me@example.org\r\nTo: you@example.org\r\nSubject: m{i}\r\n"
                   f"Message-ID: <bulk{i}@example.org>\r\n\r\nbody {i}\r\n").encode()  # fmt: skip
            item = await box.queue_raw(raw, f"<bulk{i}@example.org>", ["you@example.org"])
            ids.append(item.message_id)
        await drain(box, rounds=2000)
    finally:
        server.close()
    assert set(handler.got) == set(ids)
    assert max(handler.got.values()) == 1
    states = Counter(i.state for i in await box.items())
    assert states == {store.DONE: 1000}
    assert sum(i.attempts for i in await box.items()) > 1000  # failures really happened


async def test_permanent_refusal_stops_with_the_server_words(cache: Cache) -> None:
    """A 5xx is not retried; the user gets the server's own words."""
    handler = FlakyHandler(permanent="554 5.7.1 Message rejected as spam", fail_rate=0)
    server, port = await smtp_server(handler)
    told: list[tuple[str, str]] = []
    box = outbox(cache, port, notify=lambda mid, text: told.append((mid, text)))
    try:
        mid = await box.send(to=["you@example.org"], subject="hi", body="hello")
        await box.flush()
        await box.flush()
    finally:
        server.close()
    item = await box.status(mid)
    assert item is not None
    assert item.state == store.FAILED
    assert item.attempts == 1
    assert "rejected as spam" in item.last_error
    assert told
    assert "rejected as spam" in told[0][1]


async def test_outbox_survives_a_crash_and_an_outage(tmp_path: Path) -> None:
    """Mail queued while SMTP is down survives closing the app and goes out once later."""
    dead_port = free_port()
    c1 = await Cache.open(tmp_path / "c.sqlite3")
    box1 = outbox(c1, dead_port)
    mids = [await box1.send(to=["you@example.org"], subject=f"s{i}", body="b") for i in range(3)]
    await box1.flush()
    pending = await store.items(c1, "me", store.ACTIVE)
    assert len(pending) == 3
    assert all(i.attempts == 1 and "Connect" in i.last_error for i in pending)
    await c1.close()  # the "crash": nothing but the database survives

    handler = FlakyHandler(fail_rate=0, hang_rate=0)
    server, port = await smtp_server(handler)
    c2 = await Cache.open(tmp_path / "c.sqlite3")
    try:
        box2 = outbox(c2, port)
        await drain(box2)
        await drain(box2)  # a second pass sends nothing again
    finally:
        server.close()
        await c2.close()
    assert sorted(handler.got) == sorted(mids)
    assert set(handler.got.values()) == {1}


async def test_same_message_id_is_sent_once(cache: Cache) -> None:
    """Queuing the same Message-ID twice (a double click, a replay) sends one mail."""
    handler = FlakyHandler(fail_rate=0, hang_rate=0)
    server, port = await smtp_server(handler)
    box = outbox(cache, port)
    try:
        for _ in range(2):
            await box.send(to=["you@example.org"], subject="x", body="y", message_id="<once@ex>")
            await drain(box)
    finally:
        server.close()
    assert handler.got == {"<once@ex>": 1}


async def test_bcc_only_in_the_envelope_and_reply_headers(cache: Cache) -> None:
    """Bcc recipients get the mail but appear in no header; a reply threads."""
    handler = FlakyHandler(fail_rate=0, hang_rate=0)
    server, port = await smtp_server(handler)
    box = outbox(cache, port)
    try:
        mid = await box.send(
            to=["Bob <bob@example.org>"], cc=["carol@example.org"], bcc=["secret@example.org"],
            subject="Re: plan", body="ok", in_reply_to="<parent@ex>",
            references=["<root@ex>", "<parent@ex>"],
        )  # fmt: skip
        await drain(box)
    finally:
        server.close()
    data = handler.bodies[mid]
    assert b"secret@example.org" not in data
    assert sorted(handler.envelopes[mid]) == [
        "bob@example.org", "carol@example.org", "secret@example.org",
    ]  # fmt: skip
    parsed = email.message_from_bytes(data)
    assert parsed["In-Reply-To"] == "<parent@ex>"
    assert parsed["References"] == "<root@ex> <parent@ex>"
    assert parsed["Bcc"] is None


@pytest.mark.parametrize(
    "field_name",
    ["subject", "to", "name"],
)
def test_header_injection_is_refused(field_name: str) -> None:
    """CR/LF typed into a subject, an address or a display name never reaches a header."""
    evil = "hello\r\nBcc: victim@example.org"
    kw: dict[str, Any] = {"sender": "me@example.org", "to": ["you@example.org"],
                          "subject": "s", "body": "b"}  # fmt: skip
    if field_name == "subject":
        kw["subject"] = evil
    elif field_name == "to":
        kw["to"] = [f"you@example.org{evil}"]
    else:
        kw["sender_name"] = evil
    with pytest.raises(ValidationError):
        compose(**kw)
    with pytest.raises(ValidationError):
        compose(**{**kw, "subject": "=?utf-8?q?a=0D=0ABcc:_x@y?=\n"})


def test_non_ascii_subject_and_names_are_encoded() -> None:
    """Korean subject and display names are RFC 2047 encoded and read back the same."""
    c = compose(sender="me@example.org", sender_name="김민수", to=["이지은 <jieun@example.kr>"],
                subject="회의 일정", body="내일 봬요")  # fmt: skip
    from chmail.client.mime import parse

    p = parse(c.raw)
    assert p.subject == "회의 일정"
    assert "김민수" in p.from_
    assert "내일 봬요" in p.text
    assert c.raw.isascii() or b"\r\n\r\n" in c.raw


async def test_sent_mail_is_filed(cache: Cache, tmp_path: Path) -> None:
    """After SMTP accepts it, the mail lands in the Sent folder of the account's store."""
    handler = FlakyHandler(fail_rate=0, hang_rate=0)
    server, port = await smtp_server(handler)
    md = MaildirBackend("me", tmp_path / "Maildir")
    await md.connect()
    await md.create_folder("Sent")
    box = outbox(cache, port, sent_store=md)
    try:
        mid = await box.send(to=["you@example.org"], subject="keep me", body="b")
        await drain(box)
    finally:
        server.close()
    uids = await md.uids("Sent")
    assert len(uids) == 1
    assert mid.encode() in await md.body("Sent", uids[0])
    flags = await md.flags("Sent")
    assert "\\Seen" in flags[uids[0]]


async def test_unreachable_ch_server_sends_without_link(cache: Cache) -> None:
    """With the CH server down the mail still goes, without X-CH headers, and the user is
    told; with wait_for_link it stays in the outbox instead."""
    from chmail.client.chlink import ChLink

    dead = ChLink("127.0.0.1", free_port(), "me", "pw", timeout=0.5, backoff_initial=0.1)
    handler = FlakyHandler(fail_rate=0, hang_rate=0)
    server, port = await smtp_server(handler)
    told: list[str] = []
    acc = AccountConfig(name="me", email="me@example.org",
                        ch=ChAccountConfig(server="127.0.0.1:1", login="me"))  # fmt: skip
    box = outbox(cache, port, account=acc, allocator=dead, alloc_timeout=0.5,
                 notify=lambda mid, text: told.append(text))  # fmt: skip
    ch_wait = ChAccountConfig(server="127.0.0.1:1", login="w", wait_for_link=True)
    acc_wait = AccountConfig(name="w", email="w@example.org", ch=ch_wait)
    box_wait = outbox(cache, port, account=acc_wait, allocator=dead, alloc_timeout=0.5)
    try:
        mid = await box.send(to=["you@example.org"], subject="s", body="b")
        await drain(box)
        held = await box_wait.send(to=["you@example.org"], subject="s", body="b")
        await box_wait.flush()
    finally:
        server.close()
        await dead.close()
    assert handler.got[mid] == 1
    assert b"X-CH-" not in handler.bodies[mid]
    item = await box.status(mid)
    assert item is not None
    assert item.ch_status == "unlinked"
    assert told
    assert "without a chat link" in told[0]
    waiting = await box_wait.status(held)
    assert waiting is not None
    assert waiting.state == store.QUEUED
    assert held not in handler.got


@dataclass
class DeferringHandler(FlakyHandler):
    """FlakyHandler that answers 450 for carol the first ``defer`` times, 550 for dave,
    and records every (Message-ID, recipient) it delivered to."""

    defer: int = 2
    delivered: Counter[tuple[str, str]] = field(default_factory=Counter)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("carol@") and self.defer > 0:
            self.defer -= 1
            return "450 4.2.1 Mailbox busy, try later"
        if address.startswith("dave@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        mid = email.message_from_bytes(envelope.original_content or b"")["Message-ID"]
        for rcpt in envelope.rcpt_tos:
            self.delivered[(mid, rcpt)] += 1
        return reply


async def test_deferred_recipient_is_retried_alone(cache: Cache, tmp_path: Path) -> None:
    """A recipient deferred with 4xx while others took the mail gets it later on its own:
    each recipient receives it once, the refused one never, and Sent holds one copy."""
    handler = DeferringHandler(fail_rate=0, hang_rate=0)
    server, port = await smtp_server(handler)
    md = MaildirBackend("me", tmp_path / "Maildir")
    await md.connect()
    await md.create_folder("Sent")
    told: list[str] = []
    box = outbox(cache, port, sent_store=md, notify=lambda mid, text: told.append(text))
    try:
        mid = await box.send(
            to=["bob@example.org", "carol@example.org"], cc=["dave@example.org"],
            subject="to three", body="b",
        )  # fmt: skip
        await drain(box)
    finally:
        server.close()
    assert handler.delivered == Counter(
        {(mid, "bob@example.org"): 1, (mid, "carol@example.org"): 1}
    )
    assert handler.defer == 0
    assert any("dave@example.org" in t and "550" in t for t in told)
    item = await store.get(cache, mid)
    assert item is not None
    assert item.state == store.DONE
    assert item.filed
    assert len(await md.uids("Sent")) == 1
