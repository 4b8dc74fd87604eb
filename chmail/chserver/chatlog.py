"""A chat session's messages: their history, the resend index, the batch waiting for a
commit, and the hot path that takes new ones (the ``say`` side of
:class:`~chmail.chserver.sessions.ChatSession`, which mixes this class in).

Rules (sessions.py states the session's; these are the message side's):

* New messages get consecutive seqs. A run of them from one sender that arrived
  together is kept as one :data:`Run` and pushed at once to the other members (one
  ``chats`` frame each, or one ``chat`` per message for members that did not join with
  ``batch``); the run waits in the batch of the next commit, then its sender gets
  ``said_many``.
* A resend (a client id the sender already used on an earlier connection) is answered
  with the stored seq; see :meth:`SessionMessages._index` for what is checked when.
* At most MAX_UNSTORED messages wait for a commit; a failed commit drops its messages
  from the history and tells their senders to send them again.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from operator import itemgetter
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from chmail.chserver.sessions import SessionBackend

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


# The messages of a session waiting for a commit: (session id, first seq, last seq, the
# ``chats`` frames of seqs first..last as pushed). A session's seqs are consecutive
# between two restarts, so one range names them.
Batch = tuple[int, int, int, bytes]
# who waits for an ack, per connection: request ids, seqs, client ids
Acks = dict[SessionConn, tuple[list[int], list[int], list[str]]]


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


class SessionMessages:
    """The message side of a chat session (a mixin of ChatSession, which sets these)."""

    id: int
    backend: SessionBackend
    conns: set[SessionConn]
    max_text: int
    max_frame: int
    last_active: float

    def _init_messages(self, history: Iterable[Msg], *, reopened: bool) -> None:
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
        # Messages given a seq and pushed, not yet committed: seqs _first.._next_seq-1,
        # their frames, and who waits for an ack (a resend of one of them adds a waiter).
        self._first = 0  # 0: nothing waits
        self._frames: list[bytes] = []
        self._acks: Acks = {}

    def flush_out(self) -> None:
        """Write the output queued on the connections (ChatSession's)."""
        raise NotImplementedError

    def replay(self, conn: SessionConn, last_seq: int) -> None:
        """Queue for ``conn`` the messages after ``last_seq``, a run at a time."""
        # the run holding last_seq + 1 (from there on), then the rest
        start = max(0, bisect.bisect_right(self.runs, last_seq, key=_first_seq) - 1)
        for run_seq, sender, ts, cids, texts in self.runs[start:]:
            k = max(0, last_seq + 1 - run_seq)
            if k >= len(cids):
                continue
            seq, cids, texts = run_seq + k, cids[k:], texts[k:]
            if conn.batch:
                conn.queue(chats_frames(sender, ts, seq, cids, texts, self.max_frame))
            else:
                conn.queue(chat_frames(chat_prefix(sender, ts), seq, cids, texts))

    def _joined_as(self, conn: SessionConn) -> None:
        """``conn`` has just joined (before it is one of ``conns``)."""
        conn.since = self.next_seq
        if any(c.login == conn.login for c in self.conns):
            self._careful.add(conn.login)  # two connections of one login: see _index
        else:
            self._careful.discard(conn.login)

    @property
    def messages(self) -> list[Msg]:
        """Every message, (seq, sender, cid, text, ts) in seq order (slow: for tests)."""
        return [
            (first + i, sender, cid, text, ts)
            for first, sender, ts, cids, texts in self.runs
            for i, (cid, text) in enumerate(zip(cids, texts, strict=True))
        ]

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
