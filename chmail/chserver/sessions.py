"""Chat sessions: one TCP listener per open session, on the mail's port (S109-S111).

Rules (docs/protocol.md, "Calls and chat sessions", is the normative text):

* A session listens on its port and speaks the CH framing of protocol.py. Each side
  sends ``hello``; the client's first request is ``join`` with the token the CH server
  gave that login for this session (``call_state``). ``joined`` authenticates the link.
* Every message gets the session's next sequence number. ``(sender, cid)`` names a
  message: a resend (the same ``cid`` again after a reconnect) is answered with the
  stored ``seq`` and stored nothing new. A client never repeats a ``cid`` on one
  connection; the server does not look for that while a login has a single connection
  (see ``_index``), only across connections.
* A message is pushed (``chat``) to the other members at once, in ``seq`` order on
  every connection, and stored with everything else that arrived in the same turn of
  the event loop, in every session of the server (one transaction, see
  SessionBackend.pending); then its sender is acknowledged: after a commit each sender
  gets one ``said_many`` for all its messages in it (a resend of a stored message gets
  ``said``). Acknowledged means stored: it survives a crash of the server. ``join`` with
  ``last_seq`` replays what came after it, then the live stream follows (see
  RESTART_GAP for crash safety).
* ``typing`` and ``read`` are relayed to the other members; read state is remembered.
* ``leave``: that member goes (when the last one leaves the session ends); ``end``: the
  session ends for everyone; no activity for the idle timeout ends it too. An ended
  session pushes ``ended`` and closes its listener.
* Limits: a text over ``max_text`` bytes is refused (``limit``); a connection that has
  more than ``max_buffer`` bytes queued (it stopped reading) is dropped, and catches up
  by ``last_seq`` when it comes back. Neither harms the other members.

The same class serves relay mode (the CH server hosts it; messages go to SQLite) and
direct mode (a user's client hosts it; see chmail.client.chat).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Protocol as TypingProtocol

from chmail import protocol as p
from chmail.chserver.sessionconn import (
    Msg,
    SessionConn,
    chat_frames,
    chat_prefix,
    chats_frames,
    said_frame,
    said_many_frame,
)

log = logging.getLogger(__name__)

MAX_CID = 64  # bytes of a client message id
# Messages are pushed to the other members before their batch is committed (in the
# same turn of the loop), so a crash can lose a few that somebody saw. A session
# reopened from the database therefore continues its seqs RESTART_GAP above the last
# stored one: a client's last_seq never hides a message stored after the restart.
# At most MAX_UNSTORED messages wait for a commit at any time.
MAX_UNSTORED = 5_000
RESTART_GAP = 10_000
_first_seq = itemgetter(0)  # of a Run

# A run of messages from one sender that arrived together, kept as it came: (first seq,
# sender, ts, client ids, texts); message i of it has seq first + i. History is a list
# of runs, so a burst costs one tuple, not one per message.
Run = tuple[int, str, float, list[str], list[str]]


def runs_of(history: Iterable[Msg]) -> list[Run]:
    """Messages (seq, sender, cid, text, ts) in seq order, grouped into runs."""
    out: list[Run] = []
    for seq, sender, cid, text, ts in history:
        if out:
            first, who, when, cids, texts = out[-1]
            if who == sender and when == ts and first + len(cids) == seq:
                cids.append(cid)
                texts.append(text)
                continue
        out.append((seq, sender, ts, [cid], [text]))
    return out


def session_secret(key: bytes, session_id: int) -> bytes:
    """The per-session secret that join tokens are made with (a direct host gets it)."""
    return hmac.new(key, f"chmail-chat-session\n{session_id}".encode(), hashlib.sha256).digest()


def join_token(secret: bytes, login: str) -> str:
    mac = hmac.new(secret, f"join\n{login}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


# The messages of a session waiting for a commit: (session id, first seq, last seq, the
# ``chat`` frames of seqs first..last as pushed). A session's seqs are consecutive
# between two restarts, so one range names them.
Batch = tuple[int, int, int, bytes]
# who waits for an ack, per connection: request ids, seqs, client ids
Acks = dict[SessionConn, tuple[list[int], list[int], list[str]]]


class SessionBackend(TypingProtocol):
    """Where a session keeps what it must remember. Calls must not block."""

    def pending(self, session: ChatSession) -> None:
        """``session`` has a batch to store: call ``session.commit()`` soon (in this turn
        of the loop), or store it with others' and call ``session.stored(err)``."""

    def persist(self, batches: list[Batch]) -> BaseException | None:
        """Store ``batches`` in one transaction; the error (not raised) if that failed."""

    def joined(self, session: ChatSession, login: str) -> None: ...
    def left(self, session: ChatSession, login: str) -> None: ...
    def read(self, session: ChatSession, login: str, seq: int) -> None: ...
    def ended(self, session: ChatSession, reason: str, by: str) -> None: ...


class MemoryBackend:
    """Keeps nothing beyond the session's own memory (direct mode, tests)."""

    def pending(self, session: ChatSession) -> None:
        asyncio.get_running_loop().call_soon(session.commit)

    def persist(self, batches: list[Batch]) -> BaseException | None:
        return None

    def joined(self, session: ChatSession, login: str) -> None:
        pass

    def left(self, session: ChatSession, login: str) -> None:
        pass

    def read(self, session: ChatSession, login: str, seq: int) -> None:
        pass

    def ended(self, session: ChatSession, reason: str, by: str) -> None:
        pass


def _all_new(
    seen: dict[str, int],
    cids: list[str],
    texts: list[str],
    seq: int,
    max_text: int,
    *,
    record: bool,
) -> bool:
    """The common case of a run of messages, checked with C-level loops: every client
    id new (not in ``seen``) and of 1 to MAX_CID bytes, no text over ``max_text``. With
    ``record``, also not twice in the run, and the ids are recorded in ``seen`` from
    ``seq`` on."""
    if not (
        min(map(len, cids)) > 0
        and max(map(len, cids)) * 4 <= MAX_CID  # len(str) * 4 bounds its UTF-8 size
        and max(map(len, texts)) * 4 <= max_text
        and (not seen or seen.keys().isdisjoint(cids))
    ):
        return False
    if not record:
        return True
    known = len(seen)
    seen.update(zip(cids, range(seq, seq + len(cids)), strict=True))
    if len(seen) == known + len(cids):
        return True
    for cid in cids:  # a client id twice in the run: undo (none was known before)
        seen.pop(cid, None)
    return False


class ChatSession:
    """One chat: its members, its messages in seq order, and its listener."""

    def __init__(
        self,
        *,
        id: int,
        port: int,
        owner: str,
        message_id: str,
        subject: str,
        secret: bytes,
        backend: SessionBackend,
        max_text: int = 16384,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        max_buffer: int = 1 << 20,
        idle_timeout: float = 600.0,
        conn_timeout: float = 45.0,
        history: Iterable[Msg] = (),
        members: dict[str, int] | None = None,
        last_active: float | None = None,
        reopened: bool = False,
    ) -> None:
        self.id = id
        self.port = port
        self.owner = owner
        self.message_id = message_id
        self.subject = subject
        self.secret = secret
        self.backend = backend
        self.max_text = max_text
        self.max_frame = max_frame
        self.max_buffer = max_buffer
        self.idle_timeout = idle_timeout
        self.conn_timeout = conn_timeout
        self.runs: list[Run] = runs_of(history)  # every message, in seq order
        # sender -> client id -> seq, for the sender's messages below _upto[sender] (and
        # maybe some others): filled lazily from the runs, see _index
        self.cids: dict[str, dict[str, int]] = {}
        self._upto: dict[str, int] = {}
        self._careful: set[str] = set()  # logins that had two connections at once
        self.head = self.runs[-1][0] + len(self.runs[-1][3]) - 1 if self.runs else 0
        self.next_seq = self.head + 1
        if reopened:
            self.next_seq += RESTART_GAP
        self.members: dict[str, int] = dict(members or {})  # admitted login -> read seq
        self.conns: set[SessionConn] = set()  # joined
        self.every_conn: set[SessionConn] = set()  # joined or not
        self.last_active = last_active if last_active is not None else time.time()
        self.ended = False
        self.end_reason = ""
        self.server: asyncio.Server | None = None
        self.on_end: list[Callable[[ChatSession, str, str], None]] = []
        # Messages given a seq and pushed, not yet committed: seqs _first.._next_seq-1,
        # their frames, and who waits for an ack (a resend of one of them adds a waiter).
        self._first = 0  # 0: nothing waits
        self._frames: list[bytes] = []
        self._acks: Acks = {}
        self._dirty: set[SessionConn] = set()
        self._flush_soon = False
        self._loop = asyncio.get_running_loop()
        self._idle = self._loop.call_later(idle_timeout, self._check_idle)
        self._sweeper = self._loop.call_later(conn_timeout / 2, self._sweep)

    # ------------------------------------------------------------------ lifecycle

    async def listen(self, host: str, port: int | None = None) -> int:
        """Open the listener (on ``port``, default the session's); return the bound port."""
        self.server = await self._loop.create_server(
            lambda: SessionConn(self), host, self.port if port is None else port, reuse_address=True
        )
        bound: int = self.server.sockets[0].getsockname()[1]
        if self.port == 0:
            self.port = bound
        return bound

    def admit(self, login: str) -> str:
        """Let ``login`` join; return its token."""
        self.members.setdefault(login, 0)
        return join_token(self.secret, login)

    def online(self) -> list[str]:
        return sorted({c.login for c in self.conns if c.login})

    def end(self, reason: str, by: str = "") -> None:
        """End the session for everyone and close its listener (idempotent)."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self._idle.cancel()
        self._sweeper.cancel()
        data = p.encode(p.Ended(reason=reason, by=by))
        for c in list(self.conns):
            c.write(data)
            c.close()
        self.conns.clear()
        if self.server is not None:
            self.server.close()
        self.backend.ended(self, reason, by)
        for cb in self.on_end:
            cb(self, reason, by)

    def shutdown(self) -> None:
        """Close the listener and connections without ending the session (server stop)."""
        self._idle.cancel()
        self._sweeper.cancel()
        for c in list(self.conns):
            c.close()
        self.conns.clear()
        if self.server is not None:
            self.server.close()

    @property
    def messages(self) -> list[Msg]:
        """Every message, (seq, sender, cid, text, ts) in seq order (slow: for tests)."""
        return [
            (first + i, sender, cid, text, ts)
            for first, sender, ts, cids, texts in self.runs
            for i, (cid, text) in enumerate(zip(cids, texts, strict=True))
        ]

    def loop_time(self) -> float:
        return self._loop.time()

    def dirty(self, conn: SessionConn) -> None:
        """``conn`` has output queued; write it at the end of this turn of the loop."""
        self._dirty.add(conn)
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self.flush_out)

    def flush_out(self) -> None:
        self._flush_soon = False
        dirty, self._dirty = self._dirty, set()
        for c in dirty:
            c.flush()

    def touch(self) -> None:
        self.last_active = time.time()

    def _sweep(self) -> None:
        """Drop connections silent for ``conn_timeout`` (clients ping; the peer is gone)."""
        limit = self._loop.time() - self.conn_timeout
        for c in [c for c in self.every_conn if c.last_rx < limit]:
            log.info(
                "chat session %d: %s silent for %.0fs; dropped", self.id, c.login, self.conn_timeout
            )
            c.abort()
        self._sweeper = self._loop.call_later(self.conn_timeout / 2, self._sweep)

    def _check_idle(self) -> None:
        left = self.last_active + self.idle_timeout - time.time()
        if left <= 0:
            log.info("chat session %d on port %d is idle; ending it", self.id, self.port)
            self.end("idle")
        else:
            self._idle = self._loop.call_later(left, self._check_idle)

    # ------------------------------------------------------------------ requests

    def handle(self, conn: SessionConn, msg: p.Message) -> None:
        if isinstance(msg, p.Say):
            self.say(conn, msg.id, msg.cid, msg.text)
        elif isinstance(msg, p.Ping):
            conn.send(p.Pong(n=msg.n))
        elif isinstance(msg, p.Typing):
            self.touch()
            self._relay(conn, p.Typing(login=conn.login, active=msg.active))
        elif isinstance(msg, p.Read):
            self._read(conn, msg)
        elif isinstance(msg, p.Join):
            self._join(conn, msg)
        elif isinstance(msg, p.Leave):
            conn.send(p.Ok(id=msg.id))
            self._leave(conn.login)
        elif isinstance(msg, p.End):
            conn.send(p.Ok(id=msg.id))
            self.end("ended", by=conn.login)
        elif isinstance(msg, p.Bye):
            conn.close()
        elif isinstance(msg, p.Rejected):
            conn.send(p.Error(code=msg.code, message=msg.reason, id=msg.id))
        elif isinstance(msg, p.Unknown):
            conn.send(
                p.Error(code=p.E_UNKNOWN_TYPE, message=f"unknown type {msg.type_name!r}", id=msg.id)
            )
        elif isinstance(msg, p.Hello | p.Pong):
            pass
        else:
            conn.send(
                p.Error(
                    code=p.E_INVALID,
                    message=f"{msg.t!r} is not a chat session request",
                    id=getattr(msg, "id", None),
                )
            )

    def _join(self, conn: SessionConn, msg: p.Join) -> None:
        good = msg.session == self.id and hmac.compare_digest(
            msg.token.encode(), join_token(self.secret, msg.login).encode()
        )
        if self.ended or not good or conn.login:
            reason = "this chat has ended" if self.ended else "this chat token is not valid here"
            conn.send(p.Error(code=p.E_AUTH_FAILED, message=reason, id=msg.id))
            conn.close()
            return
        conn.login = msg.login
        conn.batch = msg.batch
        conn.since = self.next_seq
        if any(c.login == msg.login for c in self.conns):
            self._careful.add(msg.login)  # two connections of one login: see _index
        else:
            self._careful.discard(msg.login)
        self.members.setdefault(msg.login, 0)  # the token proves the server admitted it
        first = msg.login not in self.online()
        self.conns.add(conn)
        self.touch()
        conn.send(
            p.Joined(
                id=msg.id,
                session=self.id,
                login=msg.login,
                members=self.online(),
                head=self.head,
                subject=self.subject,
                message_id=self.message_id,
                max_text=self.max_text,
            )
        )
        # what came after last_seq: the run holding last_seq + 1 (from there), then the rest
        start = max(0, bisect.bisect_right(self.runs, msg.last_seq, key=_first_seq) - 1)
        for run_seq, sender, ts, cids, texts in self.runs[start:]:
            k = max(0, msg.last_seq + 1 - run_seq)
            if k >= len(cids):
                continue
            seq, cids, texts = run_seq + k, cids[k:], texts[k:]
            if conn.batch:
                conn.queue(chats_frames(sender, ts, seq, cids, texts, self.max_frame))
            else:
                conn.queue(chat_frames(chat_prefix(sender, ts), seq, cids, texts))
        for login, seq in self.members.items():
            if login != msg.login and seq:
                conn.send(p.Read(login=login, seq=seq))
        if first:
            self._relay(conn, p.Member(login=msg.login, state="joined"))
            self.backend.joined(self, msg.login)

    def say_many(
        self, conn: SessionConn, rids: list[int], cids: list[str], texts: list[str]
    ) -> None:
        """``conn``'s member says each ``texts[i]`` (request ``rids[i]``, client id
        ``cids[i]``), in order.

        The hot path: new messages get consecutive seqs, are pushed to the other members
        as one write each, and wait for the next commit; anything unusual (a resend, a
        limit) goes through :meth:`say`, in its place in the order.
        """
        login, max_text = conn.login, self.max_text
        seen, careful = self._index(conn)
        n, i = len(rids), 0
        while i < n:
            seq = self.next_seq
            room = MAX_UNSTORED - (seq - self._first if self._first else 0)
            if room <= 0:
                self.commit()
                continue
            stop = min(n, i + room)
            if i == 0 and stop == n:
                run_ids, run_cids, run_texts = rids, cids, texts
            else:
                run_ids, run_cids, run_texts = rids[i:stop], cids[i:stop], texts[i:stop]
            if _all_new(seen, run_cids, run_texts, seq, max_text, record=careful):
                self._take(conn, seq, run_ids, run_cids, run_texts)
                i = stop
                continue
            j = i
            while j < stop:  # the run of ordinary new messages from i on
                cid, text = cids[j], texts[j]
                if cid in seen or not cid or len(cid) * 4 > MAX_CID or len(text) * 4 > max_text:
                    break
                seen[cid] = seq + j - i
                j += 1
            if j > i:
                self._take(conn, seq, rids[i:j], cids[i:j], texts[i:j])
            if j < stop:  # one message the careful way, then carry on
                self.say(conn, rids[j], cids[j], texts[j])
                j += 1
            i = j
        if careful:
            self._upto[login] = self.next_seq

    def _index(self, conn: SessionConn) -> tuple[dict[str, int], bool]:
        """The client ids a message from ``conn`` must not repeat, and whether new ones
        must be recorded there (``careful``).

        A resend comes after a reconnect, so while a login has one connection at a time
        its new client ids need to be checked only against those of its messages from
        before that connection joined (``conn.since``): they are indexed lazily from the
        runs, once per connection, and the connection's own messages are not indexed at
        all (no dict insert per message on the hot path). A login that has had two
        connections at once (a reconnect racing the old link, two devices) is careful
        from then on: every message of it is indexed before the next is checked.
        """
        login = conn.login
        seen = self.cids.get(login)
        if seen is None:
            seen = self.cids[login] = {}
        careful = login in self._careful
        upto = self.next_seq if careful else conn.since
        have = self._upto.get(login, 0)
        if have < upto:
            for first, sender, _, cids, _ in self.runs[
                bisect.bisect_left(self.runs, have, key=_first_seq) :
            ]:
                if first >= upto:
                    break
                if sender == login:
                    seen.update(zip(cids, range(first, first + len(cids)), strict=True))
            self._upto[login] = upto
        return seen, careful

    def _take(
        self, conn: SessionConn, seq: int, rids: list[int], cids: list[str], texts: list[str]
    ) -> None:
        """Keep new messages ``seq``, ``seq + 1``, ... from ``conn`` (their client ids are
        recorded already): push them, and add them to the batch waiting for a commit."""
        login, now, k = conn.login, time.time(), len(rids)
        self.runs.append((seq, login, now, cids, texts))
        self.head = seq + k - 1
        data = chats_frames(login, now, seq, cids, texts, self.max_frame)
        single = b""  # the same as ``chat`` frames, for members that did not ask for batches
        self.next_seq = seq + k
        self.last_active = now
        ids, seqs, acked = self._acks.get(conn) or self._acks.setdefault(conn, ([], [], []))
        ids.extend(rids)
        seqs.extend(range(seq, seq + k))
        acked.extend(cids)
        self._frames.append(data)
        for c in self.conns:
            if c is not conn:
                if c.batch:
                    c.queue(data)
                else:
                    single = single or chat_frames(chat_prefix(login, now), seq, cids, texts)
                    c.queue(single)
        if not self._first:
            self._first = seq
            self.backend.pending(self)
        elif seq + k - self._first >= MAX_UNSTORED:
            self.commit()

    def say(self, conn: SessionConn, rid: int, cid: str, text: str) -> None:
        """``conn``'s member says ``text`` (request ``rid``, client id ``cid``)."""
        # len(str) * 4 bounds its UTF-8 size: encode only when it might be too long
        if not cid or (len(cid) * 4 > MAX_CID and len(cid.encode()) > MAX_CID):
            conn.send(
                p.Error(
                    code=p.E_INVALID,
                    id=rid,
                    message=f"a message needs a client id of 1 to {MAX_CID} bytes",
                )
            )
            return
        if len(text) * 4 > self.max_text and len(text.encode()) > self.max_text:
            conn.send(
                p.Error(
                    code=p.E_LIMIT,
                    id=rid,
                    message=f"messages are limited to {self.max_text} bytes; split it into several",
                )
            )
            return
        seen, careful = self._index(conn)
        seq = seen.get(cid)
        if seq is not None:  # a resend
            if self._first and seq >= self._first:  # not committed yet: ack with the batch
                ids, seqs, acked = self._acks.setdefault(conn, ([], [], []))
                ids.append(rid)
                seqs.append(seq)
                acked.append(cid)
            else:
                conn.queue(said_frame(rid, seq, cid))
            return
        seen[cid] = self.next_seq
        self._take(conn, self.next_seq, [rid], [cid], [text])
        if careful:
            self._upto[conn.login] = self.next_seq

    def commit(self) -> None:
        """Store the waiting batch now, alone, and acknowledge it."""
        batch = self.batch()
        if batch is not None:
            self.stored(self.backend.persist([batch]))

    def batch(self) -> Batch | None:
        """The messages waiting for a commit, or None. Call :meth:`stored` after storing."""
        if not self._first:
            return None
        return (self.id, self._first, self.next_seq - 1, b"".join(self._frames))

    def stored(self, err: BaseException | None) -> None:
        """The batch :meth:`batch` gave is committed (or failed with ``err``): acknowledge
        each message to whoever sent it."""
        first, acks = self._first, self._acks
        if not first:
            return
        self._first, self._frames, self._acks = 0, [], {}
        if err is None:
            for c, (ids, seqs, cids) in acks.items():
                c.queue(said_many_frame(ids, seqs, cids))
        else:  # not stored: the senders resend (the same cid is welcome again)
            for c, (ids, _, _) in acks.items():
                for rid in ids:
                    c.send(
                        p.Error(
                            code=p.E_INTERNAL,
                            id=rid,
                            message="the message could not be stored; send it again",
                        )
                    )
            # they are no longer part of the chat: a resend is a new message
            start = bisect.bisect_left(self.runs, first, key=_first_seq)
            for _, sender, _, cids, _ in self.runs[start:]:
                seen = self.cids.get(sender, {})
                for cid in cids:
                    seen.pop(cid, None)
            del self.runs[start:]
            self.head = self.runs[-1][0] + len(self.runs[-1][3]) - 1 if self.runs else 0
        self.flush_out()

    def _read(self, conn: SessionConn, msg: p.Read) -> None:
        seq = min(msg.seq, self.head)
        if seq <= self.members.get(conn.login, 0):
            return
        self.members[conn.login] = seq
        self._relay(conn, p.Read(login=conn.login, seq=seq))
        self.backend.read(self, conn.login, seq)

    def _leave(self, login: str) -> None:
        self.members.pop(login, None)
        for c in [c for c in self.conns if c.login == login]:
            self.conns.discard(c)
            c.close()
        self._relay(None, p.Member(login=login, state="left"))
        self.backend.left(self, login)
        if not self.members:
            self.end("ended", by=login)

    def _relay(self, sender: SessionConn | None, msg: p.Message) -> None:
        data = p.encode(msg, max_frame=self.max_frame)
        for c in list(self.conns):
            if c is not sender:
                c.write(data)

    def lost(self, conn: SessionConn) -> None:
        self.every_conn.discard(conn)
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        if conn.login and conn.login not in self.online() and not self.ended:
            self._relay(None, p.Member(login=conn.login, state="away"))
