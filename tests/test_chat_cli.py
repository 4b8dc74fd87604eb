"""``chmail chat`` and ``chmail alarms`` as real subprocesses against a real CH server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import sys
from email.message import EmailMessage
from pathlib import Path

import tomli_w

from chmail.client.cache import Cache, NewMessage
from tests.chat_helpers import chat_config
from tests.fixtures.chserver import RunningServer, ServerFactory


def write_config(tmp: Path, srv: RunningServer, login: str) -> Path:
    path = tmp / f"{login}.toml"
    account = {
        "name": login,
        "email": f"{login}@example.org",
        "kind": "maildir",
        "maildir": str(tmp / f"{login}-mail"),
        "ch": {
            "server": srv.address,
            "login": login,
            "password_command": f"printf %s {srv.passwords[login]}",
        },
    }
    path.write_text(tomli_w.dumps({"accounts": [account], "ui": {"bell": False}}))
    return path


async def chmail(config: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chmail.client",
        "--config",
        str(config),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def expect(stream: asyncio.StreamReader | None, text: str) -> str:
    """Read lines of ``stream`` until one contains ``text``; return it."""
    assert stream is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await stream.readline()).decode()
                if not line:
                    raise AssertionError(f"stream ended before {text!r}: {''.join(seen)}")
                seen.append(line)
                if text in line:
                    return line
    except TimeoutError:
        raise AssertionError(f"no {text!r} within 30 s; got: {''.join(seen)}") from None


def say(proc: asyncio.subprocess.Process, text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text.encode() + b"\n")


async def mail_from(srv: RunningServer, login: str, to: str, path: Path) -> Path:
    """An .eml file of a mail ``login`` sent to ``to``, stamped with its chat link."""
    link = srv.link(login, advertised_host="client.test")
    await link.start()
    mid = f"<cli-test.{login}@example.org>"
    chat = await link.alloc_port(mid, [to])
    await link.close()
    msg = EmailMessage()
    msg["From"] = f"{login}@example.org"
    msg["To"] = to
    msg["Subject"] = "Line mode"
    msg["Message-ID"] = mid
    for name, value in chat.headers():
        msg[name] = value
    msg.set_content("shall we chat?")
    path.write_bytes(msg.as_bytes())
    return path


async def test_line_mode_chat_between_two_processes(
    chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """bob's `chmail chat FILE.eml` rings alice's `chmail chat --answer`; lines go both ways."""
    srv = await chserver_factory(**chat_config())
    for login in ("alice", "bob"):
        await srv.add_user(login)
    eml = await mail_from(srv, "alice", "bob@example.org", tmp_path / "mail.eml")
    alice = await chmail(write_config(tmp_path, srv, "alice"), "chat", "--answer")
    await expect(alice.stderr, "waiting for a ring")
    bob = await chmail(write_config(tmp_path, srv, "bob"), "chat", "--transcript", str(eml))
    try:
        await expect(alice.stderr, "bob calls about “Line mode”")
        await expect(bob.stderr, "alice accepted")
        await expect(bob.stderr, "joined")
        await expect(alice.stderr, "joined")
        say(bob, "hello alice")
        assert (await expect(alice.stdout, "hello")).strip() == "bob: hello alice"
        say(alice, "hi bob")
        assert (await expect(bob.stdout, "hi")).strip() == "alice: hi bob"
        say(alice, "/end")
        await expect(bob.stderr, "the chat ended (ended, by alice)")
        async with asyncio.timeout(20):
            assert await alice.wait() == 0
            assert await bob.wait() == 0
        filed = [
            f
            for f in (tmp_path / "bob-mail").rglob("*")
            if f.is_file() and b"X-Chmail-Transcript" in f.read_bytes()
        ]
        assert len(filed) == 1
        transcript = email.message_from_bytes(filed[0].read_bytes(), policy=email.policy.default)
        assert transcript["Subject"] == "Chat: Line mode"
        assert transcript["In-Reply-To"] == "<cli-test.alice@example.org>"
        body = transcript.get_content()
        assert "bob: hello alice" in body
        assert "alice: hi bob" in body
    finally:
        for proc in (alice, bob):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_calling_an_offline_user_by_message_id_then_listing_alarms(
    chserver_factory: ServerFactory, tmp_path: Path
) -> None:
    """`chmail chat MESSAGE-ID` (a cached mail) to an offline user ends at once; that user's
    `chmail alarms --json` lists the call."""
    srv = await chserver_factory(**chat_config())
    for login in ("carol", "bob"):
        await srv.add_user(login)
    eml = await mail_from(srv, "carol", "bob@example.org", tmp_path / "mail.eml")
    await srv.wait_for(lambda: not srv.server.is_online("carol"))
    mail = email.message_from_bytes(eml.read_bytes(), policy=email.policy.compat32)
    async with await Cache.open() as cache:  # bob's chmail has synced that mail
        inbox = await cache.upsert_folder("bob", "INBOX", special_use="inbox")
        await cache.add_messages(
            inbox.id,
            [
                NewMessage(
                    uid=1,
                    message_id=mail["Message-ID"],
                    subject=mail["Subject"],
                    from_addr="carol@example.org",
                    ch_headers=[
                        (k, " ".join(v.split()))
                        for k, v in mail.items()  # unfolded, as sync
                        if k.lower().startswith("x-ch-")
                    ],
                )
            ],
            uidvalidity=1,
        )
    bob = await chmail(write_config(tmp_path, srv, "bob"), "chat", mail["Message-ID"])
    await expect(bob.stderr, "carol is offline; they will be alarmed")
    async with asyncio.timeout(20):
        assert await bob.wait() == 0
    config = write_config(tmp_path, srv, "carol")
    waiting = await chmail(config, "chat", "--answer")  # carol's next login shows the alarm
    try:
        await expect(waiting.stderr, "missed chat: bob called you about “Line mode”")
    finally:
        waiting.kill()
        await waiting.wait()
    carol = await chmail(config, "alarms", "--json")
    async with asyncio.timeout(20):
        out, err = await carol.communicate()
    assert carol.returncode == 0, err
    alarms = json.loads(out)
    assert [(a["caller"], a["subject"]) for a in alarms] == [("bob", "Line mode")]
