"""Nothing acknowledged is lost: a lease answered by ``alloc`` is on disk already."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from chmail.client.chlink import ChLink
from tests.fixtures.chserver import ServerProcess
from tests.test_chserver_cli import _eml, run


async def test_alloc_survives_sigkill_right_after_reply(
    chserver_process: Callable[..., Awaitable[ServerProcess]], tmp_path: Path
) -> None:
    """A server killed (SIGKILL) right after answering alloc still knows the lease."""
    data = tmp_path / "d"
    rc, _, err = await run(
        "user", "add", "alice", "--email", "alice@example.org", "--password-stdin",
        "--data", str(data), stdin="pw-alice\n",
    )  # fmt: skip
    assert rc == 0, err
    sp = await chserver_process(data)
    link = ChLink(sp.host, sp.port, "alice", "pw-alice", advertised_host="client.test")
    async with link:
        chat = await link.alloc_port("<kill@example.org>", ["Bob@Example.org"])
        sp.proc.send_signal(signal.SIGKILL)  # no chance to flush anything
        assert await sp.stop(signal.SIGKILL) == -signal.SIGKILL
    again = await chserver_process(data)
    rc, out, err = await run("tables", "--json", "--data", str(data))
    assert rc == 0, err
    ports = {row["port"]: row for row in json.loads(out)["ports"]}
    row = ports[chat.port]
    assert (row["login"], row["lease"], row["message_id"]) == (
        "alice",
        chat.lease,
        "<kill@example.org>",
    )
    assert row["recipients"] == ["bob@example.org"]
    path = _eml(tmp_path / "k.eml", "<kill@example.org>", chat.headers())
    rc, out, err = await run("check-headers", str(path), "--json", "--data", str(data))
    assert (rc, json.loads(out)["valid"]) == (0, True), out + err
    await again.stop()


async def test_check_headers_sees_a_lease_at_once(
    chserver_process: Callable[..., Awaitable[ServerProcess]], tmp_path: Path
) -> None:
    """check-headers run while the server is up sees a lease the moment alloc answered."""
    data = tmp_path / "d"
    rc, _, err = await run(
        "user", "add", "alice", "--email", "alice@example.org", "--password-stdin",
        "--data", str(data), stdin="pw-alice\n",
    )  # fmt: skip
    assert rc == 0, err
    sp = await chserver_process(data)
    async with ChLink(sp.host, sp.port, "alice", "pw-alice", advertised_host="c.test") as link:
        chats = [
            await link.alloc_port(f"<m{i}@example.org>", ["bob@example.org"]) for i in range(3)
        ]
        for i, chat in enumerate(chats):
            path = _eml(tmp_path / f"m{i}.eml", f"<m{i}@example.org>", chat.headers())
            rc, out, err = await run("check-headers", str(path), "--json", "--data", str(data))
            assert (rc, json.loads(out)["reason"]) == (0, None), out + err
    await sp.stop()


async def test_batched_allocs_survive_sigkill_and_numbers_never_repeat(
    chserver_process: Callable[..., Awaitable[ServerProcess]], tmp_path: Path
) -> None:
    """Allocations answered together (one commit) all survive SIGKILL; after the restart
    lease numbers continue above every number answered before."""
    data = tmp_path / "d"
    rc, _, err = await run(
        "user", "add", "alice", "--email", "alice@example.org", "--password-stdin",
        "--data", str(data), stdin="pw-alice\n",
    )  # fmt: skip
    assert rc == 0, err
    sp = await chserver_process(data)
    link = ChLink(sp.host, sp.port, "alice", "pw-alice", advertised_host="client.test")
    async with link:
        chats = await asyncio.gather(
            *(link.alloc_port(f"<b{i}@example.org>", ["bob@example.org"]) for i in range(30))
        )
        sp.proc.send_signal(signal.SIGKILL)
        assert await sp.stop(signal.SIGKILL) == -signal.SIGKILL
    again = await chserver_process(data)
    rc, out, err = await run("tables", "--json", "--data", str(data))
    assert rc == 0, err
    ports = {row["port"]: row for row in json.loads(out)["ports"]}
    for i, chat in enumerate(chats):
        assert (ports[chat.port]["lease"], ports[chat.port]["message_id"]) == (
            chat.lease,
            f"<b{i}@example.org>",
        )
    async with ChLink(again.host, again.port, "alice", "pw-alice", advertised_host="c.t") as link:
        later = await link.alloc_port("<after@example.org>", ["bob@example.org"])
    assert later.lease > max(chat.lease for chat in chats)
    await again.stop()
