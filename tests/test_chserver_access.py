"""Access rules of the CH server: removed users, presence privacy, per-login lockout."""

from __future__ import annotations

import pytest

from chmail import protocol as p
from chmail.chserver.access import FailureWindow
from chmail.errors import AuthError
from tests.fixtures.chserver import RunningServer, ServerFactory
from tests.test_chserver_cli import run


async def test_removed_user_is_disconnected(chserver: RunningServer) -> None:
    """`chmail-server user remove` (another process) closes the user's live links."""
    await chserver.add_user("alice")
    await chserver.add_user("bob")
    bob = await chserver.raw("bob")
    alice = await chserver.raw("alice")
    rc, _, err = await run("user", "remove", "bob", "--data", str(chserver.data_dir))
    assert rc == 0, err
    seen = await bob.closed()
    errors = [m for m in seen if isinstance(m, p.Error)]
    assert errors
    assert errors[0].code == p.E_AUTH_FAILED
    assert "removed" in errors[0].message
    await chserver.wait_for(lambda: not chserver.server.is_online("bob"))
    again = await chserver.raw()
    reply = await again.auth("bob", chserver.passwords["bob"])
    assert isinstance(reply, p.Error)
    assert reply.code == p.E_AUTH_FAILED
    pong = await alice.request(p.Presence(logins=["alice"]))  # others are untouched
    assert isinstance(pong, p.PresenceOk)
    assert pong.online == {"alice": True}


async def test_presence_only_of_related_logins(chserver: RunningServer) -> None:
    """Presence tells online only for logins the asker exchanged chat-link mail with."""
    for name in ("alice", "bob", "carol"):
        await chserver.add_user(name)
    async with (
        chserver.link("alice") as alice,
        chserver.link("bob") as bob,
        chserver.link("carol") as carol,
    ):
        asked = ["alice", "bob", "carol", "nobody"]
        everyone_off = {"alice": True, "bob": False, "carol": False, "nobody": False}
        assert await alice.presence(asked) == everyone_off
        await bob.alloc_port("<b1@example.org>", ["Alice@Example.org"])  # bob mails alice
        # alice received bob's chat link; bob sent one to alice: both may see each other.
        assert await alice.presence(asked) == {**everyone_off, "bob": True}
        assert await bob.presence(["alice", "carol"]) == {"alice": True, "carol": False}
        assert await carol.presence(["alice", "bob"]) == {"alice": False, "bob": False}


async def test_login_locked_after_repeated_failures(chserver_factory: ServerFactory) -> None:
    """Failed logins for one login from several connections lock it, with a clear error
    (after ``[server] login_lockout_failures`` of them)."""
    chserver = await chserver_factory(login_lockout_failures=4, login_lockout_minutes=15)
    pw = await chserver.add_user("alice")
    await chserver.add_user("bob")
    clients = [await chserver.raw(), await chserver.raw()]
    for i in range(4):  # two connections: the per-connection limit (3) is not what locks
        reply = await clients[i % 2].auth("alice", f"guess{i}")
        assert isinstance(reply, p.Error)
        assert reply.code == p.E_AUTH_FAILED
    client = await chserver.raw()
    reply = await client.auth("alice", pw)  # the right password no longer helps
    assert isinstance(reply, p.Error)
    assert reply.code == p.E_RATE_LIMITED
    assert "login is locked" in reply.message
    assert "'alice'" in reply.message
    with pytest.raises(AuthError, match="locked"):
        async with chserver.link("alice"):
            pass
    bob = await chserver.raw()
    assert isinstance(await bob.auth("bob", chserver.passwords["bob"]), p.AuthOk)
    for _ in range(4):  # unknown logins lock the same way: a lock reveals nothing
        c = await chserver.raw()
        reply = await c.auth("ghost", "x")
        assert isinstance(reply, p.Error)
        assert reply.code == p.E_AUTH_FAILED
    c = await chserver.raw()
    reply = await c.auth("ghost", "x")
    assert isinstance(reply, p.Error)
    assert reply.code == p.E_RATE_LIMITED


def test_failure_window_lock_lifts() -> None:
    """A lock lifts once the oldest counted failure leaves the window; success clears it."""
    w = FailureWindow(3, 100.0)
    for t in (0.0, 10.0, 20.0):
        w.add("alice", now=t)
    assert w.blocked_for("alice", now=30.0) == pytest.approx(70.0)
    assert w.blocked_for("alice", now=100.5) == 0.0
    w.add("bob", now=0.0)
    w.clear("bob")
    assert w.blocked_for("bob", now=0.0) == 0.0
