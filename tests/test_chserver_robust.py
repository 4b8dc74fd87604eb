"""The CH server under bad or heavy clients: garbage, stalls, floods, timeouts, 200 at once."""

from __future__ import annotations

import asyncio
import os
import struct

import msgpack

from chmail import protocol as p
from tests.fixtures.chserver import DEADLINE, RunningServer, ServerFactory


async def test_reconnect_from_another_address_replaces_table1(chserver: RunningServer) -> None:
    """A later login from another address replaces host and observed IP in table 1."""
    pw = await chserver.add_user("alice")
    first = await chserver.raw("alice")
    row = await chserver.store.login_row("alice")
    assert row is not None
    assert (row.host, row.observed_ip) == ("client.test", "127.0.0.1")
    await first.aclose()
    second = await chserver.raw(None, local_addr=("127.0.0.2", 0))
    reply = await second.auth("alice", pw, host="laptop.example.org")
    assert isinstance(reply, p.AuthOk)
    assert reply.observed_ip == "127.0.0.2"
    row = await chserver.store.login_row("alice")
    assert row is not None
    assert (row.host, row.observed_ip, row.online) == ("laptop.example.org", "127.0.0.2", True)
    await second.aclose()


async def test_online_drops_after_heartbeat_timeout(chserver_factory: ServerFactory) -> None:
    """A client that stops sending heartbeats is dropped and shown offline."""
    srv = await chserver_factory(heartbeat_interval=0.1, heartbeat_timeout=0.4)
    await srv.add_user("alice")
    client = await srv.raw("alice")
    assert srv.server.is_online("alice")
    seen = await client.closed()  # never answers pings: the server gives up
    assert any(isinstance(m, p.Error) and m.code == p.E_TIMEOUT for m in seen)
    await srv.wait_for(lambda: not srv.server.is_online("alice"))

    async def offline_in_table() -> bool:
        row = await srv.store.login_row("alice")
        return row is not None and not row.online

    async with asyncio.timeout(DEADLINE):
        while not await offline_in_table():
            await asyncio.sleep(0.01)


async def test_two_hundred_clients_at_once(chserver: RunningServer) -> None:
    """200 clients connect, authenticate and allocate concurrently without error."""
    logins = [f"user{i}" for i in range(200)]
    for login in logins:
        await chserver.add_user(login)

    async def one(login: str) -> int:
        async with chserver.link(login) as link:
            chat = await link.alloc_port(f"<{login}@example.org>", ["x@example.org"])
            assert chat.login == login
            return chat.port

    ports = await asyncio.gather(*(one(login) for login in logins))
    assert len(set(ports)) == 200


async def test_garbage_and_stalled_clients_do_not_delay_others(chserver: RunningServer) -> None:
    """Garbage gets an error and a close; a stalled mid-frame client blocks nobody."""
    await chserver.add_user("alice")
    stalled = await chserver.raw()
    body = msgpack.packb({"t": "ping", "n": 1, "pad": "x" * 1000})
    stalled.send_raw(struct.pack(">I", len(body)) + body[:100])  # and then nothing
    silent = await chserver.raw(None, hello=False)  # says nothing
    garbage = await chserver.raw()
    garbage.send_raw(struct.pack(">I", 16) + os.urandom(16))
    async with chserver.link("alice") as link:
        for i in range(50):
            await link.alloc_port(f"<g{i}@example.org>", ["bob@example.org"])
    seen = await garbage.closed()
    assert any(isinstance(m, p.Error) and m.code == p.E_BAD_FRAME for m in seen)
    for c in (stalled, silent, garbage):
        await c.aclose()


async def test_client_that_stops_reading_is_dropped(chserver_factory: ServerFactory) -> None:
    """Pushes to a client that never reads overflow its buffer; it is dropped, others go on."""
    srv = await chserver_factory(max_write_buffer=256 * 1024)
    await srv.add_user("sleepy")
    await srv.add_user("alice")
    sleepy = await srv.raw("sleepy")  # authenticated, then never reads again
    big = p.PresenceOk(id=0, online={f"user{i:05d}": True for i in range(4000)})
    async with srv.link("alice") as link:
        for _ in range(2000):
            if srv.server.push("sleepy", big) == 0:
                break
            await asyncio.sleep(0)  # let the loop flush to the socket
        await srv.wait_for(lambda: not srv.server.is_online("sleepy"))
        assert await link.presence(["sleepy"]) == {"sleepy": False}
    await sleepy.aclose()


async def test_oversized_frame_gets_error_and_close(chserver: RunningServer) -> None:
    """A frame announcing more than 64 KiB is answered frame_too_large and closed."""
    client = await chserver.raw()
    client.send_raw(struct.pack(">I", 64 * 1024 + 1))
    seen = await client.closed()
    assert [m.code for m in seen if isinstance(m, p.Error)] == [p.E_FRAME_TOO_LARGE]


async def test_version_refusal_names_both(chserver: RunningServer) -> None:
    """A client of another protocol version is refused with both versions named."""
    client = await chserver.raw(None, hello=False)
    client.send_raw(p.encode(p.Hello(version=2)))
    seen = await client.closed()
    errors = [m for m in seen if isinstance(m, p.Error)]
    assert [e.code for e in errors] == [p.E_VERSION]
    assert "version 2" in errors[0].message
    assert "version 1" in errors[0].message


async def test_unknown_and_early_frames_get_errors_and_carry_on(chserver: RunningServer) -> None:
    """Unknown types and requests before auth get error replies; the connection continues."""
    pw = await chserver.add_user("alice")
    client = await chserver.raw()
    client.send_raw(msgpack_frame({"t": "teleport", "id": 5}))
    reply = await client.recv()
    assert isinstance(reply, p.Error)
    assert (reply.code, reply.id) == (p.E_UNKNOWN_TYPE, 5)
    early = await client.request(p.Alloc(message_id="<a@b.c>", recipients=["x@y.z"]))
    assert isinstance(early, p.Error)
    assert early.code == p.E_NOT_AUTHENTICATED
    assert isinstance(await client.auth("alice", pw), p.AuthOk)
    again = await client.auth("alice", pw)
    assert isinstance(again, p.Error)
    assert again.code == p.E_INVALID


async def test_identity_comes_from_auth_only(chserver: RunningServer) -> None:
    """After auth, a frame claiming another login still acts as the authenticated one."""
    await chserver.add_user("alice")
    await chserver.add_user("bob")
    client = await chserver.raw("alice")
    client.send_raw(
        msgpack_frame(
            {
                "t": "alloc",
                "id": 77,
                "login": "bob",
                "message_id": "<i@x.y>",
                "recipients": ["q@r.s"],
            }
        )
    )
    reply = await client.recv_skip_pings()
    assert isinstance(reply, p.Allocated)
    assert reply.login == "alice"
    lease = chserver.server.pool.get(reply.port)
    assert lease is not None
    assert lease.login == "alice"


async def test_three_wrong_passwords_close(chserver: RunningServer) -> None:
    """Three failed logins on one connection end it."""
    await chserver.add_user("alice")
    client = await chserver.raw()
    for _ in range(3):
        reply = await client.auth("alice", "wrong")
        assert isinstance(reply, p.Error)
        assert reply.code == p.E_AUTH_FAILED
        assert "wrong" not in reply.message.split("for")[-1]  # the password is not echoed
    seen = await client.closed()
    assert any(isinstance(m, p.Bye) for m in seen)


async def test_bad_alloc_values_are_refused(chserver: RunningServer) -> None:
    """Bad Message-IDs, recipients and contexts are refused with code invalid."""
    await chserver.add_user("alice")
    client = await chserver.raw("alice")
    for alloc in (
        p.Alloc(message_id="<a@b>\r\nX: y", recipients=["x@y.z"]),
        p.Alloc(message_id="<a@b>", recipients=[]),
        p.Alloc(message_id="<a@b>", recipients=["not an address"]),
        p.Alloc(message_id="<a@b>", recipients=["x@y.z"], context="a=\r\n"),
        p.Alloc(message_id="<a@b>", recipients=["x@y.z"], thread=["bad"]),
    ):
        reply = await client.request(alloc)
        assert isinstance(reply, p.Error), alloc
        assert reply.code == p.E_INVALID


async def test_thread_reuse_and_recycling(chserver_factory: ServerFactory) -> None:
    """A reply in a thread reuses its lease; an exhausted pool recycles the oldest lease."""
    srv = await chserver_factory(ports="42000-42001")
    await srv.add_user("alice")
    async with srv.link("alice") as link:
        a = await link.alloc_port("<a@x.y>", ["bob@example.org"])
        reply = await link.alloc_port("<a2@x.y>", ["carol@example.org"], thread=["<a@x.y>"])
        assert (reply.port, reply.lease) == (a.port, a.lease)
        lease = srv.server.pool.get(a.port)
        assert lease is not None
        assert lease.recipients == ("bob@example.org", "carol@example.org")
        b = await link.alloc_port("<b@x.y>", ["bob@example.org"])
        c = await link.alloc_port("<c@x.y>", ["bob@example.org"])  # pool exhausted
        assert b.port != a.port
        assert c.port == a.port  # the least recently used lease is recycled
        assert c.lease > b.lease > a.lease
    stored = await srv.store.lease(a.port)
    assert stored is not None
    assert (stored.lease, stored.message_id) == (c.lease, "<c@x.y>")


def msgpack_frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def test_password_guessing_from_one_address_is_throttled(chserver: RunningServer) -> None:
    """After 20 failed logins from one address within a minute, logins there are refused."""
    pw = await chserver.add_user("alice")
    failures = 0
    while failures < 20:
        client = await chserver.raw()
        for _ in range(3):
            if failures == 20:
                break
            reply = await client.auth(f"user{failures}", "guess")  # below any login's lockout
            assert isinstance(reply, p.Error)
            assert reply.code == p.E_AUTH_FAILED
            failures += 1
    client = await chserver.raw()
    reply = await client.auth("alice", pw)
    assert isinstance(reply, p.Error)
    assert reply.code == p.E_RATE_LIMITED
    other = await chserver.raw(None, local_addr=("127.0.0.2", 0))
    assert isinstance(await other.auth("alice", pw), p.AuthOk)


async def test_server_pings_a_quiet_client(chserver_factory: ServerFactory) -> None:
    """The server pings an authenticated client it has not written to; answering keeps it on."""
    srv = await chserver_factory(heartbeat_interval=0.05, heartbeat_timeout=0.5)
    await srv.add_user("alice")
    client = await srv.raw("alice")
    pings = 0
    while pings < 20:  # 20 server pings answered: many heartbeats later, still online
        msg = await client.recv()
        if isinstance(msg, p.Pong):
            continue  # the answer to our own ping
        assert isinstance(msg, p.Ping)
        client.send(p.Pong(n=msg.n))
        client.send(p.Ping(n=pings))
        pings += 1
        assert srv.server.is_online("alice")


async def test_logins_and_allocs_beside_user_commands(chserver: RunningServer) -> None:
    """Clients log in (table 1 writes) and allocate while `user add` runs in other
    processes on the same database: nobody gets "database is locked"."""
    from tests.test_chserver_cli import run

    logins = [f"busy{i}" for i in range(40)]
    for login in logins:
        await chserver.add_user(login)

    async def one(login: str) -> int:
        async with chserver.link(login) as link:
            chat = await link.alloc_port(f"<{login}@example.org>", ["x@example.org"])
            return chat.port

    async def add(i: int) -> tuple[int, str, str]:
        return await run(
            "user", "add", f"extra{i}", "--email", f"extra{i}@example.org",
            "--password-stdin", "--data", str(chserver.data_dir), stdin="pw-extra\n",
        )  # fmt: skip

    adding = asyncio.gather(*(add(i) for i in range(3)))
    ports = await asyncio.gather(*(one(x) for x in logins))
    added = await adding
    assert len(set(ports)) == len(logins)
    for rc, _, err in added:
        assert rc == 0, err
    assert {f"extra{i}" for i in range(3)} <= await chserver.store.logins()
