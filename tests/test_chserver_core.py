"""The CH server's control link over real sockets: hello, auth, table 1, alloc, presence."""

from __future__ import annotations

from chmail import headers
from chmail import protocol as p
from tests.fixtures.chserver import RunningServer


async def test_auth_writes_table1(chserver: RunningServer) -> None:
    """A successful auth records the advertised host and the observed IP in table 1."""
    await chserver.add_user("alice")
    client = await chserver.raw("alice")
    row = await chserver.store.login_row("alice")
    assert row is not None
    assert (row.host, row.observed_ip, row.online) == ("client.test", "127.0.0.1", True)
    assert chserver.server.is_online("alice")
    await client.aclose()
    await chserver.wait_for(lambda: not chserver.server.is_online("alice"))


async def test_alloc_returns_a_verifiable_link(chserver: RunningServer) -> None:
    """alloc answers a signed lease that verifies against table 2."""
    await chserver.add_user("alice")
    client = await chserver.raw("alice")
    reply = await client.request(
        p.Alloc(message_id="<m1@example.org>", recipients=["Bob@example.org"])
    )
    assert isinstance(reply, p.Allocated), reply
    assert reply.host == "ch.test"
    pool_lease = chserver.server.pool.get(reply.port)
    assert pool_lease is not None
    link = headers.parse(
        [
            ("X-CH-Login", reply.login),
            ("X-CH-Port", str(reply.port)),
            ("X-CH-Host", reply.host),
            ("X-CH-Sig", reply.sig),
        ]
    )
    assert link is not None
    assert (
        headers.verify(
            link,
            message_id="<m1@example.org>",
            key=chserver.server.key,
            record=pool_lease.record(),
            now=0,
        )
        is None
    )
