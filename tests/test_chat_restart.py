"""SIGKILL the real ``chmail-server serve`` mid-chat and restart it on the same data dir:
both clients come back by themselves; nothing acknowledged is lost, nothing shown twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from chmail.chserver.app import hasher_for
from chmail.chserver.keys import ensure_data_dir
from chmail.chserver.store import ServerStore
from chmail.client.chat import ChatEngine, RingEvent
from chmail.client.chatsession import LinkEvent, SessionClient
from chmail.client.chlink import ChLink
from chmail.config import ServerConfig
from chmail.devmail.dovecot import free_port
from tests.chat_helpers import Client, next_event, port_range, until
from tests.fixtures.chserver import ServerProcess, server_env

PASSWORD = "pw-restart-secret"


async def add_users(data: Path, *logins: str) -> None:
    ensure_data_dir(data)
    store = await ServerStore.open(data)
    pw_hash = hasher_for(ServerConfig(argon2_time_cost=1, argon2_memory_kib=256)).hash(PASSWORD)
    for login in logins:
        await store.add_user(login, pw_hash, [f"{login}@example.org"], int(time.time()))
    await store.close()


async def lease_on_disk(data: Path, port: int) -> None:
    """Wait until the server has written the lease of ``port`` (a mail's lifetime is longer
    than the server's write-behind delay; a test's is not)."""
    async with asyncio.timeout(10):
        while True:
            store = await ServerStore.open(data)
            try:
                if await store.lease(port) is not None:
                    return
            finally:
                await store.close()
            await asyncio.sleep(0.02)


async def client(port: int, login: str) -> Client:
    link = ChLink(
        "127.0.0.1",
        port,
        login,
        PASSWORD,
        advertised_host="client.test",
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    await link.start()
    return Client(login, link, ChatEngine(link, login, heartbeat=2.0))


def texts_from(s: SessionClient, login: str) -> list[str]:
    return [ln.text for ln in s.lines if ln.login == login]


async def test_sigkill_mid_chat_loses_nothing_and_shows_nothing_twice(
    tmp_path: Path, chserver_process: Callable[..., Awaitable[ServerProcess]]
) -> None:
    """Kill -9 the server during a chat, restart it: the chat carries on, exactly once."""
    data = tmp_path / "srv"
    await add_users(data, "alice", "bob", "carol")
    port = free_port()
    env = server_env(CHMAIL_SERVER_PUBLIC_HOST="127.0.0.1", CHMAIL_SERVER_PORTS=port_range())
    args = ("--listen", f"127.0.0.1:{port}")
    server = await chserver_process(data, *args, env=env)
    alice, bob = await client(port, "alice"), await client(port, "bob")
    try:
        mail = await alice.send_mail("bob@example.org", "carol@example.org")
        await lease_on_disk(data, mail.link.port)  # table 2 is written behind, in batches
        st = await bob.engine.escalate(mail)
        ring = (await next_event(alice.engine.events, RingEvent)).ring
        a = await alice.join(await alice.engine.answer(ring.call))
        b = await bob.join(await bob.engine.wait_state(st.call))
        for i in range(5):
            b.say(f"before {i}")
        await until(lambda: not b.pending and len(texts_from(a, "bob")) == 5)
        acked = [ln.text for ln in b.lines if ln.seq]

        for i in range(20):  # some of these are in flight when the server dies
            b.say(f"burst {i}")
        assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
        await next_event(a.events, LinkEvent, lambda ev: ev.state == "reconnecting")
        a.say("while it was down")

        await chserver_process(data, *args, env=env)  # same data dir, same port
        await next_event(a.events, LinkEvent, lambda ev: ev.state == "open")
        await until(lambda: not a.pending and not b.pending)
        await until(
            lambda: (
                len(texts_from(a, "bob")) == 25 and "while it was down" in texts_from(b, "alice")
            )
        )
        assert texts_from(a, "bob") == [f"before {i}" for i in range(5)] + [
            f"burst {i}" for i in range(20)
        ]
        assert texts_from(b, "alice") == ["while it was down"]
        assert a.reconnects >= 1
        assert b.reconnects >= 1

        # a fresh look at the history: every acknowledged message is there, once
        fresh = SessionClient(
            a.host, a.port, a.session, "alice", alice.engine.calls[ring.call].token
        )
        await fresh.start()
        alice.sessions.append(fresh)
        await until(lambda: len(fresh.lines) == 26)
        history = [ln.text for ln in fresh.lines]
        assert all(history.count(t) == 1 for t in history)
        assert set(acked) <= set(history)
        b.say("after the restart")
        await until(lambda: "after the restart" in texts_from(a, "bob"))
        await until(lambda: alice.link.reconnects >= 1 and bob.link.reconnects >= 1)

        # another recipient joins the chat the restarted server reopened, history and all
        carol = await client(port, "carol")
        try:
            joined = await carol.engine.escalate(mail)
            assert joined.state == "accepted"
            k = await carol.join(joined)
            await until(lambda: len(k.lines) == 27)
            k.say("hello both")
            await until(lambda: "hello both" in texts_from(a, "carol"))
        finally:
            await carol.close()
    finally:
        await alice.close()
        await bob.close()
