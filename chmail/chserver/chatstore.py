"""SQL of chat sessions, members, calls and alarms (tables of chserver migration 0002).

Small async functions over the server's aiosqlite connection (``chserver.sqlite``) for
the rare writes: a call, a session opening or ending, a member, an alarm. The chat
messages themselves are in ``chat.sqlite``, written in batches from the event loop by
:class:`chmail.chserver.messagestore.MessageLog`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import aiosqlite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRow:
    id: int
    port: int
    lease: int
    owner: str
    message_id: str
    subject: str
    mode: str
    host: str
    state: str
    created_at: float
    last_active: float


class StoredMessage(NamedTuple):
    """One chat message (a NamedTuple: it is made once per message on the hot path)."""

    seq: int
    sender: str
    cid: str
    text: str
    ts: float


@dataclass(frozen=True)
class CallRow:
    id: int
    caller: str
    callee: str
    port: int
    lease: int
    message_id: str
    subject: str
    session_id: int | None
    state: str
    reason: str
    created_at: float


@dataclass(frozen=True)
class AlarmRow:
    id: int
    login: str
    caller: str
    call_id: int | None
    subject: str
    message_id: str
    port: int
    created_at: float
    delivered_at: float | None
    seen_at: float | None
    mailed_at: float | None


_SESSION_COLS = (
    "id, port, lease, owner, message_id, subject, mode, host, state, created_at, last_active"
)
_CALL_COLS = (
    "id, caller, callee, port, lease, message_id, subject, session_id, state, reason, created_at"
)
_ALARM_COLS = (
    "id, login, caller, call_id, subject, message_id, port, created_at, delivered_at, "
    "seen_at, mailed_at"
)


# ----------------------------------------------------------------------------- sessions


async def create_session(
    db: aiosqlite.Connection,
    *,
    port: int,
    lease: int,
    owner: str,
    message_id: str,
    subject: str,
    mode: str,
    host: str,
    now: float,
) -> int:
    cur = await db.execute(
        "INSERT INTO chat_sessions(port, lease, owner, message_id, subject, mode, host,"
        " created_at, last_active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (port, lease, owner, message_id, subject, mode, host, now, now),
    )
    await db.commit()
    assert cur.lastrowid is not None
    return cur.lastrowid


async def create_call_session(
    db: aiosqlite.Connection,
    *,
    port: int,
    lease: int,
    message_id: str,
    subject: str,
    mode: str,
    host: str,
    caller: str,
    callee: str,
    now: float,
) -> tuple[int, int]:
    """A ringing call, its session (owned by the callee) and both members, in one
    transaction (ringing waits for it); ``(session id, call id)``."""
    try:
        cur = await db.execute(
            "INSERT INTO chat_sessions(port, lease, owner, message_id, subject, mode, host,"
            " created_at, last_active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (port, lease, callee, message_id, subject, mode, host, now, now),
        )
        sid = cur.lastrowid
        await db.executemany(
            "INSERT INTO chat_members(session_id, login, joined_at) VALUES (?, ?, ?)",
            [(sid, caller, now), (sid, callee, now)],
        )
        cur = await db.execute(
            "INSERT INTO calls(caller, callee, port, lease, message_id, subject, state,"
            " session_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'ringing', ?, ?, ?)",
            (caller, callee, port, lease, message_id, subject, sid, now, now),
        )
        await db.commit()
    except BaseException:
        await db.rollback()
        raise
    assert sid is not None
    assert cur.lastrowid is not None
    return sid, cur.lastrowid


async def open_sessions(db: aiosqlite.Connection) -> list[SessionRow]:
    sql = f"SELECT {_SESSION_COLS} FROM chat_sessions WHERE state = 'open' ORDER BY id"  # noqa: S608
    async with db.execute(sql) as cur:
        return [SessionRow(*r) for r in await cur.fetchall()]


async def open_session_on_port(db: aiosqlite.Connection, port: int) -> SessionRow | None:
    sql = f"SELECT {_SESSION_COLS} FROM chat_sessions WHERE state = 'open' AND port = ?"  # noqa: S608
    async with db.execute(sql, (port,)) as cur:
        row = await cur.fetchone()
    return SessionRow(*row) if row else None


async def set_session_port(db: aiosqlite.Connection, session_id: int, port: int) -> None:
    await db.execute("UPDATE chat_sessions SET port = ? WHERE id = ?", (port, session_id))
    await db.commit()


async def set_session_host(db: aiosqlite.Connection, session_id: int, mode: str, host: str) -> None:
    await db.execute(
        "UPDATE chat_sessions SET mode = ?, host = ? WHERE id = ?", (mode, host, session_id)
    )
    await db.commit()


async def end_session(
    db: aiosqlite.Connection, session_id: int, *, reason: str, now: float, last_active: float
) -> None:
    await db.execute(
        "UPDATE chat_sessions SET state = 'ended', ended_at = ?, end_reason = ?,"
        " last_active = MAX(last_active, ?) WHERE id = ?",
        (now, reason, last_active, session_id),
    )
    await db.commit()


async def open_session_count(db: aiosqlite.Connection, login: str) -> int:
    """Open sessions ``login`` is a member of (and has not left)."""
    async with db.execute(
        "SELECT COUNT(*) FROM chat_members m JOIN chat_sessions s ON s.id = m.session_id"
        " WHERE m.login = ? AND m.left_at IS NULL AND s.state = 'open'",
        (login,),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def add_member(db: aiosqlite.Connection, session_id: int, login: str, now: float) -> None:
    await add_members(db, session_id, [login], now)


async def add_members(
    db: aiosqlite.Connection, session_id: int, logins: Sequence[str], now: float
) -> None:
    await db.executemany(
        "INSERT INTO chat_members(session_id, login, joined_at) VALUES (?, ?, ?)"
        " ON CONFLICT(session_id, login) DO UPDATE SET left_at = NULL",
        [(session_id, login, now) for login in logins],
    )
    await db.commit()


async def member_left(db: aiosqlite.Connection, session_id: int, login: str, now: float) -> None:
    await db.execute(
        "UPDATE chat_members SET left_at = ? WHERE session_id = ? AND login = ?",
        (now, session_id, login),
    )
    await db.commit()


async def set_read_seq(db: aiosqlite.Connection, session_id: int, login: str, seq: int) -> None:
    await db.execute(
        "UPDATE chat_members SET read_seq = MAX(read_seq, ?) WHERE session_id = ? AND login = ?",
        (seq, session_id, login),
    )
    await db.commit()


async def members(db: aiosqlite.Connection, session_id: int) -> dict[str, int]:
    """Members who have not left, with the seq each has read up to."""
    async with db.execute(
        "SELECT login, read_seq FROM chat_members WHERE session_id = ? AND left_at IS NULL"
        " ORDER BY joined_at",
        (session_id,),
    ) as cur:
        return {str(r[0]): int(r[1]) for r in await cur.fetchall()}


# ----------------------------------------------------------------------------- calls


async def create_call(
    db: aiosqlite.Connection,
    *,
    caller: str,
    callee: str,
    port: int,
    lease: int,
    message_id: str,
    subject: str,
    state: str,
    now: float,
    session_id: int | None = None,
) -> int:
    cur = await db.execute(
        "INSERT INTO calls(caller, callee, port, lease, message_id, subject, state,"
        " session_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (caller, callee, port, lease, message_id, subject, state, session_id, now, now),
    )
    await db.commit()
    assert cur.lastrowid is not None
    return cur.lastrowid


async def set_call_state(
    db: aiosqlite.Connection,
    call_id: int,
    state: str,
    *,
    now: float,
    reason: str = "",
    session_id: int | None = None,
) -> None:
    await db.execute(
        "UPDATE calls SET state = ?, reason = ?, updated_at = ?,"
        " session_id = COALESCE(?, session_id) WHERE id = ?",
        (state, reason, now, session_id, call_id),
    )
    await db.commit()


async def get_call(db: aiosqlite.Connection, call_id: int) -> CallRow | None:
    sql = f"SELECT {_CALL_COLS} FROM calls WHERE id = ?"  # noqa: S608
    async with db.execute(sql, (call_id,)) as cur:
        row = await cur.fetchone()
    return CallRow(*row) if row else None


async def stale_ringing_calls(db: aiosqlite.Connection) -> list[CallRow]:
    """Calls left ringing by a server that stopped (they are missed now)."""
    sql = f"SELECT {_CALL_COLS} FROM calls WHERE state = 'ringing'"  # noqa: S608
    async with db.execute(sql) as cur:
        return [CallRow(*r) for r in await cur.fetchall()]


# ----------------------------------------------------------------------------- alarms


async def add_alarm(
    db: aiosqlite.Connection,
    *,
    login: str,
    caller: str,
    call_id: int | None,
    subject: str,
    message_id: str,
    port: int,
    now: float,
) -> int:
    cur = await db.execute(
        "INSERT INTO alarms(login, caller, call_id, subject, message_id, port, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (login, caller, call_id, subject, message_id, port, now),
    )
    await db.commit()
    assert cur.lastrowid is not None
    return cur.lastrowid


async def list_alarms(
    db: aiosqlite.Connection, login: str, *, include_seen: bool = False
) -> list[AlarmRow]:
    where = "login = ?" if include_seen else "login = ? AND seen_at IS NULL"
    sql = f"SELECT {_ALARM_COLS} FROM alarms WHERE {where} ORDER BY id"  # noqa: S608
    async with db.execute(sql, (login,)) as cur:
        return [AlarmRow(*r) for r in await cur.fetchall()]


async def count_alarms(db: aiosqlite.Connection, login: str) -> int:
    """Alarms of ``login`` not yet seen (acknowledged)."""
    async with db.execute(
        "SELECT COUNT(*) FROM alarms WHERE login = ? AND seen_at IS NULL", (login,)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def mark_alarms_delivered(db: aiosqlite.Connection, ids: Sequence[int], now: float) -> None:
    await db.executemany(
        "UPDATE alarms SET delivered_at = COALESCE(delivered_at, ?) WHERE id = ?",
        [(now, i) for i in ids],
    )
    await db.commit()


async def ack_alarms(db: aiosqlite.Connection, login: str, ids: Sequence[int], now: float) -> None:
    await db.executemany(
        "UPDATE alarms SET seen_at = COALESCE(seen_at, ?) WHERE id = ? AND login = ?",
        [(now, i, login) for i in ids],
    )
    await db.commit()


async def mark_alarm_mailed(
    db: aiosqlite.Connection, alarm_id: int, *, now: float | None, error: str = ""
) -> None:
    await db.execute(
        "UPDATE alarms SET mailed_at = ?, mail_error = ? WHERE id = ?", (now, error, alarm_id)
    )
    await db.commit()


async def alarm_mail_status(
    db: aiosqlite.Connection, alarm_id: int
) -> tuple[float | None, str] | None:
    """``(mailed_at, mail_error)`` of an alarm, or None if there is no such alarm."""
    async with db.execute(
        "SELECT mailed_at, mail_error FROM alarms WHERE id = ?", (alarm_id,)
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else (row[0], str(row[1]))


async def unmailed_alarms(db: aiosqlite.Connection) -> list[AlarmRow]:
    """Alarms whose mail has not gone out yet (retried at start)."""
    sql = f"SELECT {_ALARM_COLS} FROM alarms WHERE mailed_at IS NULL AND seen_at IS NULL"  # noqa: S608
    async with db.execute(sql) as cur:
        return [AlarmRow(*r) for r in await cur.fetchall()]
