"""The CH link over TLS, and a link built from an account's [accounts.ch] settings."""

from __future__ import annotations

import shlex
import ssl
import subprocess
from pathlib import Path

import pytest

from chmail.client.chlink import ChLink
from chmail.config import AccountConfig, ChAccountConfig
from chmail.errors import ConnectionLost
from tests.fixtures.chserver import RunningServer, ServerFactory


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_link(chserver_factory: ServerFactory, tmp_path: Path) -> None:
    """With tls_cert/tls_key the server speaks TLS; a client trusting the cert logs in."""
    cert, key = self_signed(tmp_path)
    srv = await chserver_factory(tls_cert=str(cert), tls_key=str(key))
    await srv.add_user("alice")
    trusting = ssl.create_default_context(cafile=str(cert))
    async with srv.link("alice", ssl_context=trusting) as link:
        chat = await link.alloc_port("<t@example.org>", ["bob@example.org"])
        assert chat.login == "alice"
    untrusting = ChLink(srv.host, srv.port, "alice", srv.passwords["alice"], tls=True)
    with pytest.raises(ConnectionLost, match="TLS"):
        await untrusting.start()


async def test_link_from_account(chserver: RunningServer) -> None:
    """ChLink.from_account takes server, login and the password command from the config."""
    pw = await chserver.add_user("alice")
    account = AccountConfig(
        name="work",
        ch=ChAccountConfig(
            server=chserver.address, login="alice", password_command=f"echo {shlex.quote(pw)}"
        ),
    )
    link = await ChLink.from_account(account)
    async with link:
        assert await link.presence(["alice"]) == {"alice": True}
