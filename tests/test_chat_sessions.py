"""Chat sessions on real TCP listeners with the real SQLite store (no CH control link)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest

from chmail import migrate
from chmail import protocol as p
from chmail.chserver import chatstore
from chmail.chserver.chathub import SessionHub
from chmail.chserver.sessionconn import chats_frames
from chmail.chserver.sessions import ChatSession
from chmail.client.chatsession import (
    EndedEvent,
    ErrorEvent,
    Line,
    MemberEvent,
    ReadEvent,
    SessionClient,
    Stored,
    TypingEvent,
)
from chmail.config import ServerConfig
from chmail.devmail.dovecot import free_port
from chmail.errors import ChatError

KEY = b"k" * 32
E = TypeVar("E")


async def next_event(
    client: SessionClient, kind: type[E], pred: Callable[[E], bool] = lambda e: True
) -> E:
    """The next event of ``kind`` matching ``pred`` (others are skipped)."""
    async with asyncio.timeout(10):
        while True:
            ev = await client.events.get()
            if isinstance(ev, kind) and pred(ev):
                return ev


class Env:
    def __init__(self, db: aiosqlite.Connection, path: Path, config: ServerConfig) -> None:
        self.db, self.path, self.config = db, path, config
        self.hub: SessionHub | None = None
        self.clients: list[SessionClient] = []

    async def start_hub(self) -> SessionHub:
        self.hub = SessionHub(
            self.db, self.path.with_name("chat.sqlite"), KEY, self.config, "127.0.0.1"
        )
        await self.hub.start()
        return self.hub

    def messages(self, session_id: int) -> list[chatstore.StoredMessage]:
        assert self.hub is not None
        assert self.hub.log is not None
        return self.hub.log.load(session_id)

    async def session(self, *logins: str, port: int | None = None) -> ChatSession:
        assert self.hub is not None
        s = await self.hub.open(
            port=port or free_port(),
            lease=1,
            owner=logins[0],
            message_id="<m1@test>",
            subject="Lunch?",
            host="127.0.0.1",
        )
        for login in logins:
            await self.hub.admit(s, login)
        return s

    async def client(
        self, s: ChatSession, login: str, last_seq: int = 0, heartbeat: float = 2.0
    ) -> SessionClient:
        c = SessionClient("127.0.0.1", s.port, s.id, login, s.admit(login), heartbeat=heartbeat)
        c.last_seq = last_seq
        await c.start()
        self.clients.append(c)
        return c


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    path = tmp_path / "chserver.sqlite"
    db = await migrate.connect(path, "chserver")
    e = Env(db, path, ServerConfig(max_chat_message=1000, session_idle_timeout=60.0))
    await e.start_hub()
    yield e
    for c in e.clients:
        await c.close()
    if e.hub is not None:
        await e.hub.close()
    await db.close()


async def test_messages_flow_both_ways_in_seq_order(env: Env) -> None:
    """Two members exchange messages; each is stored once with consecutive seqs."""
    s = await env.session("alice", "bob")
    a = await env.client(s, "alice")
    b = await env.client(s, "bob")
    a.say("hi bob")
    got = await next_event(b, Line)
    assert (got.login, got.text, got.seq) == ("alice", "hi bob", 1)
    b.say("hi alice")
    back = await next_event(a, Line, lambda ev: not ev.mine)
    assert back.text == "hi alice"
    assert back.login == "bob"
    await next_event(b, Stored)
    stored = env.messages(s.id)
    assert [(m.seq, m.sender, m.text) for m in stored] == [
        (1, "alice", "hi bob"),
        (2, "bob", "hi alice"),
    ]


async def bare_join(
    s: ChatSession, login: str, *, batch: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, p.Connection]:
    """A bare protocol connection of ``login``, joined to ``s`` (its decoder enforces the
    frame limit)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    conn = p.Connection(p.Role.CLIENT)
    writer.write(conn.send(p.Hello()))
    writer.write(
        conn.send(p.Join(id=1, session=s.id, login=login, token=s.admit(login), batch=batch))
    )
    async with asyncio.timeout(10):  # nothing but join may be sent before joined
        while not conn.authenticated:
            conn.receive_data(await reader.read(65536))
    return reader, writer, conn


async def acks_of(reader: asyncio.StreamReader, conn: p.Connection, n: int) -> dict[int, int]:
    """The next ``n`` acknowledgements on a connection: request id -> seq."""
    acks: dict[int, int] = {}
    async with asyncio.timeout(10):
        while len(acks) < n:
            conn.receive_data(await reader.read(65536))
            for m in conn.events():
                if isinstance(m, p.Said):
                    acks[m.id] = m.seq
                elif isinstance(m, p.SaidMany):
                    acks.update(zip(m.ids, m.seqs, strict=True))
    return acks


async def test_resend_after_reconnect_is_stored_once(env: Env) -> None:
    """Messages resent with the same client ids on a new connection get their stored
    seqs back and no new rows; a new client id in the same burst is stored."""
    s = await env.session("alice")
    r1, w1, c1 = await bare_join(s, "alice")
    w1.write(b"".join(c1.send(p.Say(id=i, cid=f"m{i}", text=f"t{i}")) for i in (2, 3)))
    assert await acks_of(r1, c1, 2) == {2: 1, 3: 2}
    w1.close()  # the link drops; the client did not see the acks, so it resends
    await until_closed(s, "alice")
    r2, w2, c2 = await bare_join(s, "alice")
    burst = [p.Say(id=10, cid="m2", text="t2"), p.Say(id=11, cid="m3", text="t3")]
    burst.append(p.Say(id=12, cid="m4", text="t4"))
    w2.write(b"".join(c2.send(m) for m in burst))
    assert await acks_of(r2, c2, 3) == {10: 1, 11: 2, 12: 3}
    w2.close()
    assert [(m.seq, m.cid) for m in env.messages(s.id)] == [(1, "m2"), (2, "m3"), (3, "m4")]


async def test_resend_racing_the_old_connection_is_stored_once(env: Env) -> None:
    """While a login's old connection is still open, a resend on its new one and a late
    copy on the old one are both answered with the one stored seq."""
    s = await env.session("alice")
    r1, w1, c1 = await bare_join(s, "alice")
    w1.write(c1.send(p.Say(id=2, cid="x", text="once")))
    assert await acks_of(r1, c1, 1) == {2: 1}
    r2, w2, c2 = await bare_join(s, "alice")  # the old link is still up
    w2.write(c2.send(p.Say(id=3, cid="x", text="once")))
    w2.write(c2.send(p.Say(id=4, cid="y", text="new")))
    assert await acks_of(r2, c2, 2) == {3: 1, 4: 2}
    w1.write(c1.send(p.Say(id=5, cid="y", text="new")))  # late, on the old link
    assert await acks_of(r1, c1, 1) == {5: 2}
    for w in (w1, w2):
        w.close()
    assert [(m.seq, m.cid) for m in env.messages(s.id)] == [(1, "x"), (2, "y")]


async def until_closed(s: ChatSession, login: str) -> None:
    """Wait until the session has no connection of ``login`` left."""
    async with asyncio.timeout(10):
        while any(c.login == login for c in s.every_conn):
            await asyncio.sleep(0.01)


async def test_dropped_member_reconnects_and_gets_what_it_missed(env: Env) -> None:
    """A member whose connection drops comes back by itself and sees each message once."""
    s = await env.session("alice", "bob")
    a = await env.client(s, "alice")
    b = await env.client(s, "bob")
    a.say("one")
    await next_event(b, Line)
    for c in list(s.conns):  # the network drops bob
        if c.login == "bob" and c.transport is not None:
            c.transport.abort()
    await next_event(a, MemberEvent, lambda ev: ev.state == "away")
    a.say("two")
    a.say("three")
    await next_event(a, Stored, lambda ev: ev.seq == 3)
    seen = [(await next_event(b, Line)).text for _ in range(2)]
    assert seen == ["two", "three"]
    assert [ln.text for ln in b.lines] == ["one", "two", "three"]
    assert b.reconnects == 1


async def test_history_survives_a_hub_restart(env: Env) -> None:
    """Stored messages come back after the hub restarts; the listener is reopened."""
    s = await env.session("alice", "bob")
    a = await env.client(s, "alice")
    a.say("before the restart")
    await next_event(a, Stored)
    port, sid = s.port, s.id
    await a.close()
    env.clients.clear()
    assert env.hub is not None
    await env.hub.close()
    hub = await env.start_hub()
    again = hub.sessions[sid]
    assert again.port == port
    b = await env.client(again, "bob")
    line = await next_event(b, Line)
    assert line.text == "before the restart"
    assert line.seq == 1


async def test_typing_read_and_three_members(env: Env) -> None:
    """Typing and read state reach the other members; a third member joins the chat."""
    s = await env.session("alice", "bob", "carol")
    a = await env.client(s, "alice")
    b = await env.client(s, "bob")
    c = await env.client(s, "carol")
    b.typing(True)
    assert (await next_event(a, TypingEvent)).login == "bob"
    assert (await next_event(c, TypingEvent)).login == "bob"
    a.say("all three of us")
    assert (await next_event(b, Line)).text == "all three of us"
    assert (await next_event(c, Line)).text == "all three of us"
    c.mark_read()
    got = await next_event(a, ReadEvent)
    assert (got.login, got.seq) == ("carol", 1)


async def test_leave_then_end_closes_the_listener(env: Env) -> None:
    """A member who leaves is announced; end ends it for all and closes the port."""
    s = await env.session("alice", "bob", "carol")
    a = await env.client(s, "alice")
    b = await env.client(s, "bob")
    c = await env.client(s, "carol")
    await c.leave()
    assert (await next_event(a, MemberEvent, lambda ev: ev.state == "left")).login == "carol"
    await a.end()
    ended = await next_event(b, EndedEvent)
    assert (ended.reason, ended.by) == ("ended", "alice")
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", s.port)
    row = await chatstore.open_session_on_port(env.db, s.port)
    assert row is None


async def test_idle_session_is_torn_down(env: Env) -> None:
    """A session without activity for the idle timeout ends and closes its listener."""
    assert env.hub is not None
    await env.hub.close()
    env.config = ServerConfig(session_idle_timeout=0.3)
    await env.start_hub()
    s = await env.session("alice")
    a = await env.client(s, "alice")
    assert (await next_event(a, EndedEvent)).reason == "idle"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", s.port)


async def test_oversized_message_is_refused_and_others_carry_on(env: Env) -> None:
    """A text over the limit gets a clear error; the session keeps working."""
    s = await env.session("alice", "bob")
    a = await env.client(s, "alice")
    b = await env.client(s, "bob")
    with pytest.raises(ChatError, match="limited to 1000 bytes"):
        a.say("x" * 1001)
    raw: Any = a  # bypass the client-side check: the server refuses too
    raw._send(p.Say(id=99, cid="big", text="y" * 1001))
    err = await next_event(a, ErrorEvent)
    assert "limited to 1000 bytes" in err.message
    a.say("small")
    assert (await next_event(b, Line)).text == "small"


async def test_wrong_token_is_refused(env: Env) -> None:
    """Joining with a token made for someone else is refused."""
    s = await env.session("alice", "bob")
    c = SessionClient("127.0.0.1", s.port, s.id, "mallory", s.admit("bob"))
    with pytest.raises(ChatError, match="not valid"):
        await c.start()


async def test_silent_connection_is_dropped(env: Env) -> None:
    """A connection that stops sending (no pings) is dropped; the others see it go away."""
    assert env.hub is not None
    await env.hub.close()
    env.config = ServerConfig(heartbeat_timeout=0.4)
    await env.start_hub()
    s = await env.session("alice", "bob")
    a = await env.client(s, "alice", heartbeat=0.1)  # alice pings; bob will not
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    conn = p.Connection(p.Role.CLIENT)
    writer.write(conn.send(p.Hello()))
    writer.write(conn.send(p.Join(id=1, session=s.id, login="bob", token=s.admit("bob"))))
    await next_event(a, MemberEvent, lambda ev: ev.login == "bob" and ev.state == "joined")
    assert (await next_event(a, MemberEvent)).state == "away"  # bob said nothing since
    async with asyncio.timeout(10):
        while await reader.read(65536):
            pass  # until the server closes it
    writer.close()


async def test_long_history_is_replayed_to_a_newcomer(env: Env) -> None:
    """A member joining late gets the whole history, even when it is larger than the
    write buffer a reader may fall behind by."""
    assert env.hub is not None
    await env.hub.close()
    env.config = ServerConfig(max_write_buffer=64 * 1024, max_chat_message=16000)
    await env.start_hub()
    s = await env.session("alice", "bob")
    a = await env.client(s, "alice")
    for i in range(300):  # 4.5 MB: more than the kernel's socket buffers take at once
        a.say(f"{i:04d} " + "x" * 15000)
    await until_stored(a)
    b = await env.client(s, "bob")
    async with asyncio.timeout(10):
        while len(b.lines) < 300:
            await b.events.get()
    assert [ln.text[:4] for ln in b.lines] == [f"{i:04d}" for i in range(300)]
    assert b.reconnects == 0


async def until_stored(c: SessionClient) -> None:
    async with asyncio.timeout(10):
        while c.pending:
            await c.changed()


PAD = "x" * 40


def test_chats_frames_stay_under_the_frame_limit() -> None:
    """A long run of messages is split into chats frames that each fit the limit and
    together carry every message once, in order."""
    cids = [f"c{i}" for i in range(5000)]
    texts = [f"message {i} " + "é" * (i % 50) for i in range(5000)]
    data = chats_frames("alice", 1.5, 7, cids, texts, p.DEFAULT_MAX_FRAME)
    dec = p.FrameDecoder(p.DEFAULT_MAX_FRAME)  # refuses a frame over the limit
    frames = [p.decode_body(body) for body in dec.feed(data)]
    assert len(frames) > 1
    got = [
        (m.seq + i, cid, text)
        for m in frames
        if isinstance(m, p.Chats)
        for i, (cid, text) in enumerate(zip(m.cids, m.texts, strict=True))
    ]
    assert got == [(7 + i, cids[i], texts[i]) for i in range(5000)]


async def test_a_burst_reaches_batch_and_single_members_and_is_stored(env: Env) -> None:
    """3,000 messages sent at once: a member that joined with batch gets them as chats
    frames, one without as chat frames, both in seq order and within the frame limit;
    the sender gets every ack; all are stored and come back after a hub restart."""
    s = await env.session("alice", "bob", "carol")
    ra, wa, ca = await bare_join(s, "alice", batch=True)
    rb, wb, cb = await bare_join(s, "bob", batch=True)
    rc, wc, cc = await bare_join(s, "carol", batch=False)
    n = 3000
    wa.write(
        b"".join(ca.send(p.Say(id=10 + i, cid=f"c{i}", text=f"burst {i} {PAD}")) for i in range(n))
    )
    acked: dict[str, int] = {}
    async with asyncio.timeout(20):
        while len(acked) < n:
            ca.receive_data(await ra.read(65536))
            for m in ca.events():
                if isinstance(m, p.SaidMany):
                    acked.update(zip(m.cids, m.seqs, strict=True))
    assert sorted(acked.values()) == list(range(1, n + 1))

    async def receive(r: asyncio.StreamReader, c: p.Connection) -> tuple[list[int], set[str]]:
        seqs: list[int] = []
        kinds: set[str] = set()
        async with asyncio.timeout(20):
            while len(seqs) < n:
                c.receive_data(await r.read(65536))  # a frame over 64 KiB would raise here
                for m in c.events():
                    if isinstance(m, p.Chats):
                        seqs += range(m.seq, m.seq + len(m.cids))
                        assert m.texts == [
                            f"burst {q - 1} {PAD}" for q in range(m.seq, m.seq + len(m.cids))
                        ]
                        kinds.add(m.t)
                    elif isinstance(m, p.Chat):
                        seqs.append(m.seq)
                        assert m.text == f"burst {m.seq - 1} {PAD}"
                        kinds.add(m.t)
        return seqs, kinds

    assert await receive(rb, cb) == (list(range(1, n + 1)), {"chats"})
    assert await receive(rc, cc) == (list(range(1, n + 1)), {"chat"})
    for w in (wa, wb, wc):
        w.close()
    assert [m.seq for m in env.messages(s.id)] == list(range(1, n + 1))
    assert env.hub is not None
    await env.hub.close()
    hub = await env.start_hub()
    again = hub.sessions[s.id]
    assert [(m[0], m[3]) for m in again.messages] == [(i + 1, f"burst {i} {PAD}") for i in range(n)]
    assert again.next_seq > n  # continues above the stored ones
