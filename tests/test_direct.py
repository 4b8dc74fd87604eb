"""Direct mode (patent ¶33): the sender's own client hosts the chat, with a relay fallback."""

from __future__ import annotations

from chmail.client.chat import RingEvent
from chmail.client.chatsession import Line
from tests.chat_helpers import chat_config, connect, next_event
from tests.fixtures.chserver import ServerFactory


async def test_direct_mode_host_serves_the_chat_itself(chserver_factory: ServerFactory) -> None:
    """A direct-mode user's mail names its own host; the chat runs there, not on the server."""
    srv = await chserver_factory(**chat_config())
    for login in ("alice", "bob", "carol"):
        await srv.add_user(login)
    alice = await connect(srv, "alice", direct_host="127.0.0.2")
    bob = await connect(srv, "bob")
    carol = await connect(srv, "carol")
    try:
        mail = await alice.send_mail("bob@example.org")
        assert mail.link.host == "127.0.0.2"
        relayed = await carol.send_mail("bob@example.org")
        assert relayed.link.host == "127.0.0.1"  # relay mode: the server's public name
        st = await bob.engine.escalate(mail)
        ring = (await next_event(alice.engine.events, RingEvent)).ring
        mine = await alice.engine.answer(ring.call)
        assert (mine.state, mine.host, mine.port) == ("accepted", "127.0.0.2", mail.link.port)
        theirs = await bob.engine.wait_state(st.call)
        assert theirs.host == "127.0.0.2"
        hub = srv.server.extensions["chat_hub"]
        assert hub.sessions[theirs.session].server is None  # the server does not host it
        assert alice.engine.hosted[ring.call].port == mail.link.port
        a = await alice.join(mine)
        b = await bob.join(theirs)
        b.say("straight to you")
        assert (await next_event(a.events, Line, lambda ln: not ln.mine)).text == "straight to you"
        a.say("and back")
        assert (await next_event(b.events, Line, lambda ln: not ln.mine)).text == "and back"
        await b.end()  # the host tells the server, which ends the call for both
        ended = await bob.engine.wait_state(st.call, ("ended",))
        assert ended.state == "ended"
        assert theirs.session not in hub.sessions
    finally:
        for c in (alice, bob, carol):
            await c.close()


async def test_direct_mode_falls_back_to_relay_when_unreachable(
    chserver_factory: ServerFactory,
) -> None:
    """When the advertised host cannot be reached, the server hosts the chat itself."""
    srv = await chserver_factory(**chat_config())
    for login in ("alice", "bob"):
        await srv.add_user(login)
    # alice advertises an address nobody can reach (TEST-NET-1), not one of this machine's:
    # her chmail listens on every interface, and the server must wait for her to let go
    alice = await connect(srv, "alice", direct_host="192.0.2.1")
    bob = await connect(srv, "bob")
    try:
        mail = await alice.send_mail("bob@example.org")
        assert mail.link.host == "192.0.2.1"
        st = await bob.engine.escalate(mail)
        ring = (await next_event(alice.engine.events, RingEvent)).ring
        mine = await alice.engine.answer(ring.call)
        assert (mine.state, mine.host) == ("accepted", "127.0.0.1")
        theirs = await bob.engine.wait_state(st.call)
        assert theirs.host == "127.0.0.1"
        hub = srv.server.extensions["chat_hub"]
        assert hub.sessions[theirs.session].server is not None  # relayed by the server
        a = await alice.join(mine)
        b = await bob.join(theirs)
        b.say("through the relay")
        assert (
            await next_event(a.events, Line, lambda ln: not ln.mine)
        ).text == "through the relay"
        assert ring.call not in alice.engine.hosted  # told to stop hosting
    finally:
        for c in (alice, bob):
            await c.close()
