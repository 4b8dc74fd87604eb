"""ChLink against a real CH server: login, alloc, presence, pushes, reconnect, errors."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from chmail import headers
from chmail import protocol as p
from chmail.chserver.app import build_server, hasher_for
from chmail.client.chlink import ChLink, LinkState
from chmail.config import ServerConfig
from chmail.errors import AuthError, ConnectionLost, ServerError
from tests.fixtures.chserver import DEADLINE, TEST_SERVER_CONFIG, RunningServer, ServerFactory


async def test_start_alloc_and_verify(chserver: RunningServer) -> None:
    """start() logs in; alloc_port returns a ChatLink that verifies against table 2."""
    await chserver.add_user("alice")
    link = chserver.link("alice")
    await link.start()
    try:
        assert link.state is LinkState.CONNECTED
        assert link.observed_ip == "127.0.0.1"
        chat = await link.alloc_port("<a1@example.org>", ["bob@example.org"])
        assert (chat.login, chat.host) == ("alice", "ch.test")
        record = chserver.server.pool.get(chat.port)
        assert record is not None
        assert record.recipients == ("bob@example.org",)
        reason = headers.verify(
            chat,
            message_id="<a1@example.org>",
            key=chserver.server.key,
            record=record.record(),
            now=0,
        )
        assert reason is None
    finally:
        await link.close()
    assert link.state is LinkState.CLOSED


async def test_wrong_password_raises_auth_error(chserver: RunningServer) -> None:
    """A wrong password makes start() raise AuthError naming the login."""
    await chserver.add_user("alice")
    link = ChLink(chserver.host, chserver.port, "alice", "not-the-password")
    with pytest.raises(AuthError, match="alice"):
        await link.start()


async def test_unknown_login_raises_auth_error(chserver: RunningServer) -> None:
    """An unknown login gets the same AuthError as a wrong password."""
    link = ChLink(chserver.host, chserver.port, "nobody", "whatever")
    with pytest.raises(AuthError, match="wrong login or password"):
        await link.start()


async def test_bad_login_characters_name_the_rule(chserver: RunningServer) -> None:
    """A login with forbidden characters is refused with the allowed characters named."""
    link = ChLink(chserver.host, chserver.port, "Al ice", "whatever")
    with pytest.raises(AuthError, match="lowercase letters a-z"):
        await link.start()


async def test_unreachable_server_raises_connection_lost(chserver: RunningServer) -> None:
    """Nothing listening: start() raises ConnectionLost with the address."""
    link = ChLink("127.0.0.1", 1, "alice", "x", connect_timeout=2)
    with pytest.raises(ConnectionLost, match=r"127\.0\.0\.1:1"):
        await link.start()


async def test_server_error_carries_code(chserver: RunningServer) -> None:
    """An error reply surfaces as ServerError with the server's code."""
    await chserver.add_user("alice")
    async with chserver.link("alice") as link:
        with pytest.raises(ServerError) as info:
            await link.alloc_port("not-a-message-id", ["bob@example.org"])
        assert info.value.code == p.E_INVALID


async def test_presence_follows_links(chserver: RunningServer) -> None:
    """presence() reports who has a live link (of a login that mailed us a chat link)."""
    await chserver.add_user("alice")
    await chserver.add_user("bob")
    async with chserver.link("alice") as alice:
        assert await alice.presence(["alice", "bob"]) == {"alice": True, "bob": False}
        async with chserver.link("bob") as bob:
            await bob.alloc_port("<to-alice@example.org>", ["alice@example.org"])
            assert await alice.presence(["bob"]) == {"bob": True}
        await chserver.wait_for(lambda: not chserver.server.is_online("bob"))
        assert await alice.presence(["bob"]) == {"bob": False}


async def test_push_reaches_callback_and_queue(chserver: RunningServer) -> None:
    """server.push() to a login reaches on_push callbacks and subscribed queues."""
    await chserver.add_user("alice")
    async with chserver.link("alice") as link:
        got: list[p.Message] = []
        link.on_push(got.append)
        q = link.subscribe()
        sent = chserver.server.push("alice", p.Ping(n=7))  # ping is answered, not pushed
        assert sent == 1
        chserver.server.push("alice", p.PresenceOk(id=0, online={"bob": True}))
        msg = await asyncio.wait_for(q.get(), 10)
        assert isinstance(msg, p.PresenceOk)
        assert got == [msg]


async def test_reconnects_and_logs_in_again(chserver: RunningServer) -> None:
    """After the server drops the link, ChLink reconnects with backoff and re-authenticates."""
    await chserver.add_user("alice")
    states: list[LinkState] = []
    link = chserver.link("alice", backoff_initial=0.05)
    link.on_state(states.append)
    async with link:
        for ctx in chserver.server.connections("alice"):
            ctx.abort()
        await chserver.wait_for(lambda: link.reconnects == 1 and link.connected.is_set())
        assert LinkState.DISCONNECTED in states
        chat = await link.alloc_port("<after@example.org>", ["bob@example.org"])
        assert chat.login == "alice"
        assert chserver.server.is_online("alice")


async def test_heartbeats_keep_link_alive(chserver_factory: ServerFactory) -> None:
    """With a short heartbeat the link stays up across many timeout periods."""
    srv = await chserver_factory(heartbeat_interval=0.05, heartbeat_timeout=0.3)
    await srv.add_user("alice")
    async with srv.link("alice") as link:
        ctx = srv.server.connections("alice")[0]
        start = ctx.last_rx
        await srv.wait_for(lambda: ctx.last_rx - start > 1.0)
        assert link.reconnects == 0
        assert srv.server.is_online("alice")


async def test_background_start_connects_when_server_appears(tmp_path: Path) -> None:
    """start(wait=False) keeps trying in the background until the server answers."""
    with socket.socket() as sock:  # a port where nothing listens (yet)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    link = ChLink("127.0.0.1", port, "alice", "pw-alice", backoff_initial=0.05, backoff_max=0.2)
    await link.start(wait=False)
    server = None
    try:
        async with asyncio.timeout(DEADLINE):
            while link.last_error is None:
                await asyncio.sleep(0.01)
        assert link.state in (LinkState.CONNECTING, LinkState.DISCONNECTED)
        config = ServerConfig(**TEST_SERVER_CONFIG)  # type: ignore[arg-type]
        server = await build_server(config, tmp_path / "srv")
        await server.store.add_user("alice", hasher_for(config).hash("pw-alice"), [], 0)
        await server.start("127.0.0.1", port)
        await link.wait_connected(timeout=DEADLINE)
        assert link.reconnects == 0
        assert await link.presence(["alice"]) == {"alice": True}
    finally:
        await link.close()
        if server is not None:
            await server.stop()


async def test_failed_start_may_be_retried(chserver: RunningServer) -> None:
    """After a failed start() the same link can start again once the password is right."""
    link = ChLink(chserver.host, chserver.port, "alice", "pw-alice-secret")
    with pytest.raises(AuthError):
        await link.start()
    assert link.state is LinkState.IDLE
    await chserver.add_user("alice")
    async with link:
        assert link.state is LinkState.CONNECTED
