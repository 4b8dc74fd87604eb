"""POP3 against a real Dovecot: UIDL makes each message arrive once; keep or delete."""

from __future__ import annotations

import poplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chmail.client.accounts import open_account
from chmail.client.backends.pop3 import Pop3Fetcher
from chmail.client.cache import Cache
from chmail.devmail import lmtp
from chmail.errors import AuthError
from tests.fixtures.mailstack import MailStack, MailUser


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[Cache]:
    c = await Cache.open(tmp_path / "cache.sqlite3")
    yield c
    await c.close()


async def deliver(stack: MailStack, user: MailUser, n: int, tag: str) -> None:
    for i in range(n):
        raw = f"Subject: {tag}{i}\r\nMessage-ID: <{tag}{i}@x>\r\n\r\n.dot line\r\nbody\r\n"
        await lmtp.deliver(stack.dovecot.lmtp_path, "x@example.org", [user.address], raw.encode())


def server_count(stack: MailStack, user: MailUser) -> int:
    pop = poplib.POP3("127.0.0.1", stack.pop3_port)
    pop.user(user.name)
    pop.pass_(user.password)
    n = int(pop.stat()[0])
    pop.quit()
    return n


async def test_uidl_fetches_each_message_once(
    mailstack: MailStack, mail_user: MailUser, cache: Cache, tmp_path: Path
) -> None:
    """Repeated fetches store each message once (UIDL), keep them on the server, and the
    POP3 account then syncs like a Maildir with searchable headers."""
    await deliver(mailstack, mail_user, 3, "p")
    acc = mail_user.account_config("pop3", maildir=str(tmp_path / "popbox"))
    account = await open_account(acc, cache)
    assert account.pop3 is not None
    assert await account.pop3.fetch() == 3
    assert await account.pop3.fetch() == 0
    await deliver(mailstack, mail_user, 2, "q")
    assert await account.pop3.fetch() == 2
    assert server_count(mailstack, mail_user) == 5
    await account.backend.connect()
    await account.sync()
    inbox = await cache.folder_by_name(acc.name, "INBOX")
    assert inbox is not None
    assert await cache.count(inbox.id) == 5
    msg = await cache.by_message_id("<p0@x>")
    assert msg is not None
    raw = await account.syncer.open_body(msg.pk)
    assert b"\r\n.dot line\r\n" in raw  # dot-unstuffed by POP3, kept as sent
    await account.close()


async def test_delete_after_fetch(
    mailstack: MailStack, mail_user: MailUser, cache: Cache, tmp_path: Path
) -> None:
    """With keep = false a message is deleted on the server once it is safely stored."""
    await deliver(mailstack, mail_user, 2, "d")
    fetcher = Pop3Fetcher("acc", cache, tmp_path / "box", host="127.0.0.1",
                          port=mailstack.pop3_port, user=mail_user.name,
                          password=mail_user.password, security="plain", keep=False)  # fmt: skip
    assert await fetcher.fetch() == 2
    assert server_count(mailstack, mail_user) == 0
    assert len(list((tmp_path / "box" / "new").iterdir())) == 2


async def test_wrong_password_is_a_sentence(
    mailstack: MailStack, mail_user: MailUser, cache: Cache, tmp_path: Path
) -> None:
    """A refused POP3 login raises AuthError naming the server and the user."""
    fetcher = Pop3Fetcher("acc", cache, tmp_path / "box", host="127.0.0.1",
                          port=mailstack.pop3_port, user=mail_user.name, password="wrong",
                          security="plain")  # fmt: skip
    with pytest.raises(AuthError, match=mail_user.name):
        await fetcher.fetch()
