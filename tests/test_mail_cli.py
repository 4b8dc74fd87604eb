"""The mail command line against the real stack: sync, send, search, show; devmail."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import tomli_w

from chmail.client.__main__ import main
from chmail.devmail.seed import demo_messages, seed_imap
from chmail.devmail.stack import DevMail
from tests.fixtures.mailstack import MailStack, MailUser
from tests.tui_helpers import HOSTILE_MAIL, TERMINAL_CONTROLS


def write_config(path: Path, user: MailUser, stack: MailStack) -> Path:
    pw = f"printf %s {user.password}"
    cfg = {"accounts": [{
        "name": "me", "email": user.address, "display_name": "Me", "kind": "imap",
        "imap": {"host": "127.0.0.1", "port": stack.imap_port, "security": "plain",
                 "user": user.name, "password_command": pw},
        "smtp": {"host": "127.0.0.1", "port": stack.smtp_port, "security": "plain"},
    }]}  # fmt: skip
    path.write_text(tomli_w.dumps(cfg))
    return path


def test_sync_send_search_show(
    mailstack: MailStack, mail_user: MailUser, mail_user2: MailUser, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A script can sync, send (filed in Sent), search with --json and show a mail."""
    asyncio.run(seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                          demo_messages(15, to=("Me", mail_user.address))))  # fmt: skip
    monkeypatch.setenv(
        "CHMAIL_CONFIG", str(write_config(tmp_path / "c.toml", mail_user, mailstack))
    )
    assert main(["sync"]) == 0
    out = capsys.readouterr()
    assert "me/INBOX: 15 messages, 15 unread" in out.out
    assert "15/15" in out.err  # the progress bar

    monkeypatch.setattr("sys.stdin", io.StringIO("Hello from the CLI\n"))
    assert main(["send", "--to", mail_user2.address, "--subject", "CLI 메일"]) == 0
    sent = capsys.readouterr().out
    assert sent.startswith("sent <")
    mid = sent.split()[1]

    assert main(["sync"]) == 0
    capsys.readouterr()
    assert main(["search", "CLI", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["folder"], r["message_id"]) for r in rows] == [("Sent", mid)]

    assert main(["search", "회의"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    korean_mid = line.split()[-1]
    assert main(["show", korean_mid]) == 0
    shown = capsys.readouterr().out
    assert "Subject: 회의 일정 안내" in shown
    assert "회의실에서" in shown
    assert main(["show", korean_mid, "--raw"]) == 0
    assert "=?euc-kr?B?" in capsys.readouterr().out


def test_search_and_show_draw_no_escape_sequence(
    mailstack: MailStack, mail_user: MailUser, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A mail carrying terminal escape sequences is searched and shown with its control
    characters as visible stand-ins; --raw and --json still give it exactly."""
    asyncio.run(seed_imap("127.0.0.1", mailstack.imap_port, mail_user.name, mail_user.password,
                          [HOSTILE_MAIL]))  # fmt: skip
    monkeypatch.setenv(
        "CHMAIL_CONFIG", str(write_config(tmp_path / "c.toml", mail_user, mailstack))
    )
    assert main(["sync"]) == 0
    capsys.readouterr()
    assert main(["search", "invoice"]) == 0
    listed = capsys.readouterr().out
    assert "Mal␛[5mlory" in listed
    assert "Invoice ␛[2J␛[31mpaid" in listed
    assert main(["search", "invoice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["subject"].startswith("Invoice \x1b[2J")
    assert main(["show", "<hostile@example.org>"]) == 0
    shown = capsys.readouterr().out
    assert "Hello ␛[2J␛[41mred␛]0;pwned␇ and \ufffd31m C1." in shown
    assert not TERMINAL_CONTROLS & set(listed + shown)
    assert main(["show", "<hostile@example.org>", "--raw"]) == 0
    assert "\x1b[2J" in capsys.readouterr().out


def test_send_refuses_header_injection(
    mailstack: MailStack, mail_user: MailUser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A subject with a line break is refused with a sentence, and nothing is sent."""
    monkeypatch.setenv(
        "CHMAIL_CONFIG", str(write_config(tmp_path / "c.toml", mail_user, mailstack))
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("x"))
    assert main(["send", "--to", "a@example.org", "--subject", "hi\r\nBcc: evil@example.org"]) == 1
    assert "line break" in capsys.readouterr().err


async def test_devmail_stack_with_and_without_dovecot(tmp_path: Path) -> None:
    """DevMail serves seeded Maildirs over IMAP with Dovecot, or as plain Maildirs without."""
    from chmail.client.accounts import open_account
    from chmail.client.cache import Cache

    cleanup: list[Path] = []

    for use_dovecot in (True, False):
        # Maildirs where Dovecot (run as nobody under root) can reach them.
        mail_root = Path(tempfile.mkdtemp(prefix="dm-", dir="/tmp"))
        mail_root.chmod(0o755)
        cleanup.append(mail_root)
        stack = DevMail(tmp_path / f"data{use_dovecot}", users={"zed": "zedpw"},
                        use_dovecot=use_dovecot, mail_root=mail_root)  # fmt: skip
        await stack.start()
        try:
            assert await stack.seed("zed", 5) == 5
            assert await stack.seed("zed", 5) == 0  # only into an empty box
            acc = stack.account("zed")
            assert acc.kind == ("imap" if use_dovecot else "maildir")
            assert "[[accounts]]" in stack.config_snippet("zed")
            cache = await Cache.open(tmp_path / f"c{use_dovecot}.sqlite3")
            account = await open_account(acc, cache, watcher=False)
            await account.backend.connect()
            await account.sync()
            await account.close()
            inbox = await cache.folder_by_name("zed", "INBOX")
            assert inbox is not None
            assert inbox.total == 5
            await cache.close()
        finally:
            await stack.stop()
    for d in cleanup:
        shutil.rmtree(d, ignore_errors=True)


def test_send_without_ch_server_tells_the_user(
    mailstack: MailStack, mail_user: MailUser, mail_user2: MailUser, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """With the CH server down, `chmail send` still sends, without a chat link, and says so."""
    from chmail.devmail.dovecot import free_port

    path = write_config(tmp_path / "c.toml", mail_user, mailstack)
    text = path.read_text() + (
        f'\n[accounts.ch]\nserver = "127.0.0.1:{free_port()}"\nlogin = "me"\n'
        'password_command = "printf %s pw"\n'
    )
    path.write_text(text)
    monkeypatch.setenv("CHMAIL_CONFIG", str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO("no chat today\n"))
    assert main(["send", "--to", mail_user2.address, "--subject", "plain"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("sent <")
    assert "(with chat link)" not in out.out
    assert "without a chat link" in out.err
