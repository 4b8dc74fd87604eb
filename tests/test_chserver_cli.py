"""``chmail-server`` and ``chmail ch`` as subprocesses: users, tables, check-headers, serve."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path

from chmail.client.chlink import ChLink
from tests.fixtures.chserver import (
    DEADLINE,
    RunningServer,
    ServerFactory,
    ServerProcess,
    server_env,
)


async def run(
    *args: str, stdin: str | None = None, module: str = "chmail.chserver", **env: str
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=server_env(**env),
    )
    async with asyncio.timeout(DEADLINE * 3):
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_user_add_list_passwd_remove(tmp_path: Path) -> None:
    """Users are added with addresses, listed as JSON, re-passworded and removed."""
    data = str(tmp_path / "d")
    rc, out, err = await run(
        "user", "add", "alice", "--email", "Alice@Example.org", "--email", "a@example.net",
        "--password-stdin", "--data", data, stdin="s3cret\n",
    )  # fmt: skip
    assert rc == 0, err
    rc, out, _ = await run("user", "list", "--json", "--data", data)
    assert json.loads(out) == [
        {
            "login": "alice",
            "emails": ["a@example.net", "alice@example.org"],
            "created_at": json.loads(out)[0]["created_at"],
        }
    ]
    rc, _, err = await run("user", "passwd", "alice", "--password-stdin", "--data", data,
                           stdin="other\n")  # fmt: skip
    assert rc == 0, err
    rc, _, err = await run("user", "remove", "alice", "--data", data)
    assert rc == 0, err
    rc, out, _ = await run("user", "list", "--json", "--data", data)
    assert json.loads(out) == []
    assert (tmp_path / "d" / "chserver.sqlite3").stat().st_mode & 0o077 == 0


async def test_user_errors_are_sentences(tmp_path: Path) -> None:
    """Duplicate login, bad characters, missing --password-stdin, unknown user: exit 1 + why."""
    data = str(tmp_path / "d")
    add = ("user", "add", "bob", "--email", "bob@example.org", "--password-stdin", "--data", data)
    assert (await run(*add, stdin="pw\n"))[0] == 0
    rc, _, err = await run(*add, stdin="pw\n")
    assert rc == 1
    assert "already exists" in err
    rc, _, err = await run("user", "add", "Bob!", "--email", "x@example.org", "--password-stdin",
                           "--data", data, stdin="pw\n")  # fmt: skip
    assert rc == 1
    assert "lowercase letters a-z, digits 0-9" in err
    rc, _, err = await run("user", "add", "carol", "--email", "c@example.org", "--data", data)
    assert rc == 1
    assert "--password-stdin" in err
    rc, _, err = await run("user", "remove", "nobody", "--data", data)
    assert rc == 1
    assert "no user 'nobody'" in err
    rc, _, err = await run("user", "add", "dave", "--email", "bob@example.org", "--password-stdin",
                           "--data", data, stdin="pw\n")  # fmt: skip
    assert rc == 1
    assert "already belongs" in err


async def test_serve_sigterm_and_tables(
    tmp_path: Path, chserver_process: Callable[..., Awaitable[ServerProcess]]
) -> None:
    """serve says 'listening on', serves login + alloc, stops on SIGTERM; tables shows both."""
    data = tmp_path / "d"
    rc, _, err = await run("user", "add", "alice", "--email", "alice@example.org",
                           "--password-stdin", "--data", str(data), stdin="pw-alice\n")  # fmt: skip
    assert rc == 0, err
    sp = await chserver_process(data, "--public-host", "ch.example.net")
    async with ChLink(sp.host, sp.port, "alice", "pw-alice", advertised_host="alice.test") as link:
        chat = await link.alloc_port("<m1@example.org>", ["bob@example.org"])
        assert chat.host == "ch.example.net"
        rc, out, _ = await run("tables", "--json", "--data", str(data))
        tables = json.loads(out)
        assert tables["logins"][0]["online"] is True
    assert await sp.stop(signal.SIGTERM) == 0
    rc, out, _ = await run("tables", "--json", "--data", str(data))
    tables = json.loads(out)
    assert set(tables) == {"logins", "ports"}
    (row,) = tables["logins"]
    assert (row["login"], row["host"], row["observed_ip"], row["online"]) == (
        "alice", "alice.test", "127.0.0.1", False,
    )  # fmt: skip
    (lease,) = tables["ports"]
    assert (lease["port"], lease["login"], lease["message_id"], lease["recipients"]) == (
        chat.port, "alice", "<m1@example.org>", ["bob@example.org"],
    )  # fmt: skip
    assert lease["lease"] == chat.lease
    assert lease["expires"] == chat.expires
    rc, out, _ = await run("tables", "--data", str(data))
    assert "table 1" in out
    assert "alice.test" in out


async def test_sigint_stops_cleanly_and_state_survives_restart(
    tmp_path: Path, chserver_process: Callable[..., Awaitable[ServerProcess]]
) -> None:
    """SIGINT stops the server with status 0; after a restart the lease is still known."""
    data = tmp_path / "d"
    await run("user", "add", "alice", "--email", "alice@example.org", "--password-stdin",
              "--data", str(data), stdin="pw-alice\n")  # fmt: skip
    sp = await chserver_process(data)
    async with ChLink(sp.host, sp.port, "alice", "pw-alice") as link:
        first = await link.alloc_port("<m1@example.org>", ["bob@example.org"])
    assert await sp.stop(signal.SIGINT) == 0
    sp2 = await chserver_process(data)
    async with ChLink(sp2.host, sp2.port, "alice", "pw-alice") as link:
        again = await link.alloc_port("<m2@example.org>", ["bob@example.org"], ["<m1@example.org>"])
        other = await link.alloc_port("<m3@example.org>", ["carol@example.org"])
    assert again.port == first.port
    assert again.lease == first.lease
    assert other.lease > first.lease
    assert await sp2.stop() == 0


async def test_second_server_on_same_data_is_refused(
    tmp_path: Path, chserver_process: Callable[..., Awaitable[ServerProcess]]
) -> None:
    """Two servers cannot share a data directory (the port pool lives in memory)."""
    data = tmp_path / "d"
    await chserver_process(data)
    rc, _, err = await run("serve", "--data", str(data), "--listen", "127.0.0.1:0")
    assert rc == 1
    assert "already running" in err


def _eml(path: Path, message_id: str, headers: list[tuple[str, str]]) -> Path:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "hello"
    msg["Message-ID"] = message_id
    for name, value in headers:
        msg[name] = value
    msg.set_content("hi\n")
    path.write_bytes(msg.as_bytes())
    return path


async def test_check_headers_reasons(chserver_factory: ServerFactory, tmp_path: Path) -> None:
    """check-headers exits 0 only for a valid link and names forged/altered/recycled/unknown."""
    srv: RunningServer = await chserver_factory(ports="42000-42000")
    await srv.add_user("alice")
    async with srv.link("alice") as link:
        old = await link.alloc_port("<old@example.org>", ["bob@example.org"])
        new = await link.alloc_port("<new@example.org>", ["carol@example.org"])
    assert new.port == old.port
    data = str(srv.data_dir)
    forged_sig = f"v=1; e={new.expires}; n={new.lease}; s={'A' * 43}"
    cases = {
        "valid": _eml(tmp_path / "v.eml", "<new@example.org>", new.headers()),
        "recycled": _eml(tmp_path / "r.eml", "<old@example.org>", old.headers()),
        "altered": _eml(tmp_path / "a.eml", "<other@example.org>", new.headers()),
        "forged": _eml(
            tmp_path / "f.eml",
            "<new@example.org>",
            [(k, forged_sig) if k == "X-CH-Sig" else (k, v) for k, v in new.headers()],
        ),
        "unknown": _eml(
            tmp_path / "u.eml",
            "<new@example.org>",
            [(k, "42001") if k == "X-CH-Port" else (k, v) for k, v in new.headers()],
        ),
        "missing": _eml(tmp_path / "m.eml", "<x@example.org>", []),
    }
    for expected, path in cases.items():
        rc, out, err = await run("check-headers", str(path), "--json", "--data", data)
        result = json.loads(out)
        assert result["valid"] is (expected == "valid"), (expected, out, err)
        assert rc == (0 if expected == "valid" else 1)
        assert result["reason"] == (None if expected == "valid" else expected)
    rc, out, _ = await run("check-headers", str(cases["recycled"]), "--data", data)
    assert out.startswith("invalid (recycled):")


async def test_check_headers_expired(chserver_factory: ServerFactory, tmp_path: Path) -> None:
    """A link past its lease's expiry is reported as expired."""
    srv = await chserver_factory(lease_days=0.0)
    await srv.add_user("alice")
    async with srv.link("alice") as link:
        chat = await link.alloc_port("<e@example.org>", ["bob@example.org"])
    path = _eml(tmp_path / "e.eml", "<e@example.org>", chat.headers())
    rc, out, _ = await run("check-headers", str(path), "--json", "--data", str(srv.data_dir))
    assert rc == 1
    assert json.loads(out)["reason"] == "expired"


async def test_chmail_ch_status_and_alloc(chserver: RunningServer) -> None:
    """`chmail ch status` says who is connected where; `ch alloc` prints stampable headers."""
    pw = await chserver.add_user("alice")
    base = ("--server", chserver.address, "--login", "alice", "--password-stdin")
    rc, out, err = await run("ch", "status", *base, stdin=pw + "\n", module="chmail.client")
    assert rc == 0, err
    assert out.startswith(f"connected as alice to {chserver.address}")
    rc, out, err = await run(
        "ch", "status", "--json", *base, stdin="wrong\n", module="chmail.client"
    )
    assert rc == 1
    assert json.loads(out)["code"] == "auth"
    alloc = ("ch", "alloc", *base, "--to", "bob@example.org", "--message-id", "<x1@example.org>")
    rc, out, err = await run(*alloc, stdin=pw + "\n", module="chmail.client")
    assert rc == 0, err
    names = [line.split(":", 1)[0] for line in out.splitlines()]
    assert names == ["Message-ID", "X-CH-Login", "X-CH-Port", "X-CH-Host", "X-CH-Sig"]
    rc, out, err = await run(*alloc, "--json", stdin=pw + "\n", module="chmail.client")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["message_id"] == "<x1@example.org>"
    assert doc["headers"]["X-CH-Login"] == "alice"
    assert doc["headers"]["X-CH-Port"] == str(doc["port"])
