"""``chmail chat`` (line-mode chat about a mail) and ``chmail alarms`` (missed chats).

    chmail chat [--account A] MESSAGE-ID | FILE.eml   ring the sender of that mail, chat
    chmail chat [--account A] --answer                wait for a ring, take it, chat
    chmail alarms [--account A] [--json] [--all] [--ack]

Line mode: every line read from standard input is one message; messages of the others
are printed to standard output as ``login: text``; what happens (ringing, joined, left,
ended, reconnecting) goes to standard error as ``* ...``. ``/end`` ends the chat for
everybody, ``/leave`` (or the end of input) leaves it once every message you typed is
stored. ``--stay`` keeps printing after the end of input until the chat ends.
Exit status: 0 chatted (or the callee will be alarmed), 1 error, 3 declined / missed /
cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from chmail import config as config_mod
from chmail.client.chat import (
    AlarmEvent,
    ChatEngine,
    MailRef,
    mail_ref,
    open_engine,
    transcript_mail,
)
from chmail.client.chatsession import (
    EndedEvent,
    ErrorEvent,
    Line,
    LinkEvent,
    MemberEvent,
    SessionClient,
)
from chmail.client.cli import print_json
from chmail.client.safe_text import block, one_line
from chmail.errors import ChatError

BELL = "\a"


def register(sub: Any) -> None:
    chat = sub.add_parser(
        "chat",
        help="chat about a mail on the command line (line mode)",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("mail", nargs="?", help="the mail's Message-ID, or a path to an .eml file")
    chat.add_argument("--account", metavar="A", help="account to use (default: the first)")
    chat.add_argument("--answer", action="store_true", help="wait for a ring and take it")
    chat.add_argument(
        "--stay", action="store_true", help="after the end of input, stay until the chat ends"
    )
    chat.add_argument(
        "--transcript",
        action="store_true",
        help="when the chat ends, file its transcript into the mailbox (in the mail's thread)",
    )
    chat.add_argument("--no-bell", action="store_true", help="do not ring the terminal bell")
    chat.set_defaults(func=run_chat)

    alarms = sub.add_parser("alarms", help="list missed chats (alarms)")
    alarms.add_argument("--account", metavar="A", help="account to use (default: the first)")
    alarms.add_argument("--json", action="store_true", help="print JSON")
    alarms.add_argument("--all", action="store_true", help="include alarms already seen")
    alarms.add_argument("--ack", action="store_true", help="mark the listed alarms seen")
    alarms.set_defaults(func=run_alarms)


def note(text: str) -> None:
    print(f"* {one_line(text)}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- alarms


async def run_alarms(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    acc = cfg.account(args.account)
    async with open_engine(acc) as engine:
        alarms = await engine.alarms(include_seen=args.all)
        if args.ack and alarms:
            await engine.alarms(ack=[int(str(a["id"])) for a in alarms])
    if args.json:
        print_json(alarms)
        return 0
    if not alarms:
        print("No missed chats.")
        return 0
    for a in alarms:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(str(a["at"]))))
        subject = f" about “{a['subject']}”" if a.get("subject") else ""
        seen = "" if not a.get("seen") else " (seen)"
        line = f"{a['caller']} called{subject}  {a.get('message_id', '')}{seen}"
        print(f"{when}  {one_line(line)}")
    return 0


# ----------------------------------------------------------------------------- chat


def _read_file(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is a file (a small .eml: read at once)."""
    if not path.is_file():
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ChatError(f"cannot read {path}: {exc.strerror}") from exc


async def find_mail(args: argparse.Namespace, account: str) -> MailRef:
    """The mail named on the command line: an .eml file, or a Message-ID in the cache."""
    target = str(args.mail)
    raw = None if target.startswith("<") else _read_file(Path(target))
    if raw is not None:
        return mail_ref(raw)
    from chmail.client.cache import Cache

    mid = target if target.startswith("<") else f"<{target}>"
    cache = await Cache.open()
    try:
        msg = await cache.by_message_id(mid, account=account)
    finally:
        await cache.close()
    if msg is None:
        raise ChatError(
            f"no mail {mid} in the local cache of account {account}; run `chmail sync`, "
            "or pass the path of an .eml file"
        )
    pairs = [*msg.ch_headers, ("Message-ID", msg.message_id), ("Subject", msg.subject)]
    if msg.references:
        pairs.append(("References", " ".join(msg.references)))
    return mail_ref(pairs)


async def run_chat(args: argparse.Namespace) -> int:
    if not args.mail and not args.answer:
        raise ChatError("name a mail (Message-ID or .eml file) to chat about, or use --answer")
    cfg = config_mod.load(args.config)
    acc = cfg.account(args.account)
    bell = "" if args.no_bell or not cfg.ui.bell else BELL
    async with open_engine(acc) as engine:
        alarms = asyncio.get_running_loop().create_task(show_alarms(engine, bell))
        try:
            return await chat_in(args, acc, engine, bell)
        finally:
            alarms.cancel()


async def show_alarms(engine: ChatEngine, bell: str) -> None:
    """Missed chats pushed at login (S117): one line each, with the bell."""
    seen: set[object] = set()
    while True:
        ev = await engine.events.get()
        if not isinstance(ev, AlarmEvent):
            continue
        for a in ev.alarms:
            if a.get("id") in seen:
                continue
            seen.add(a.get("id"))
            subject = f" about “{a['subject']}”" if a.get("subject") else ""
            note(f"missed chat: {a.get('caller')} called you{subject}{bell}")


async def chat_in(
    args: argparse.Namespace, acc: config_mod.AccountConfig, engine: ChatEngine, bell: str
) -> int:
    """Ring (or answer), then chat in line mode; the exit status."""
    if args.answer:
        session, thread = await answer_ring(engine, bell)
    else:
        ref = await find_mail(args, acc.name)
        joined = await call(engine, ref, bell)
        if joined is None:
            return 0
        if isinstance(joined, int):
            return joined
        session = joined
        thread = (ref.message_id, ref.subject, ref.references)
    try:
        await line_mode(session, stay=args.stay)
    finally:
        await session.close()
    if args.transcript:
        await file_transcript(acc, session, *thread)
    return 0


async def call(engine: ChatEngine, ref: MailRef, bell: str) -> SessionClient | int | None:
    st = await engine.escalate(ref)
    if st.state == "alarmed":
        note(st.message)
        return None
    if st.state == "accepted":  # a chat on this mail is going on: join it
        note(st.message or "joining the chat")
        return await engine.join(st)
    if st.state == "ringing":
        note(f"ringing {st.peer} about “{st.subject}”…")
        st = await engine.wait_state(st.call)
    if st.state != "accepted":
        note(st.message or f"the call was {st.state}")
        return 3
    note(f"{st.peer or 'the chat'} accepted{bell}")
    return await engine.join(st)


async def answer_ring(
    engine: ChatEngine, bell: str
) -> tuple[SessionClient, tuple[str, str, tuple[str, ...]]]:
    note("waiting for a ring…")
    while True:
        ring = await engine.next_ring()
        note(f"{ring.caller} calls about “{ring.subject}” ({ring.message_id}){bell}")
        st = await engine.answer(ring.call, accept=True)
        if st.state == "accepted":
            break
        note(st.message or f"the call is {st.state}")
    session = await engine.join(st)
    return session, (ring.message_id, ring.subject, ())


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """A daemon thread: standard input, line by line, into ``queue`` (None at the end).

    It reads the file descriptor itself (``os.read``), not ``sys.stdin``, so that a
    thread still blocked in it cannot hold the interpreter up at exit.
    """

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                put(line.decode("utf-8", "replace").rstrip("\r"))
        if buf:
            put(buf.decode("utf-8", "replace"))
        put(None)

    threading.Thread(target=run, name="stdin", daemon=True).start()


async def line_mode(session: SessionClient, *, stay: bool = False) -> None:
    note(f"joined; in the chat: {', '.join(session.members) or 'just you'}")
    inbox: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    _stdin_lines(loop, inbox)
    printer = loop.create_task(show(session))
    try:
        while True:
            getter = loop.create_task(inbox.get())
            await asyncio.wait({getter, printer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # the chat ended
                getter.cancel()
                return
            text = getter.result()
            if text is None or text == "/leave":
                break
            if text == "/end":
                await session.end()
                return
            if text.strip():
                try:
                    session.say(text)
                except ChatError as exc:
                    note(str(exc))
        await wait_stored(session)
        if stay:
            await printer
            return
        await session.leave()
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer


async def wait_stored(session: SessionClient) -> None:
    """Until every message typed so far is stored (or the chat ended)."""
    while session.pending and session.ended is None:
        await session.changed()


async def show(session: SessionClient) -> None:
    while True:
        ev = await session.events.get()
        if isinstance(ev, Line) and not ev.mine:
            print(f"{one_line(ev.login)}: {block(ev.text)}", flush=True)
            session.mark_read(ev.seq)
        elif isinstance(ev, MemberEvent):
            note(f"{ev.login} {ev.state}" if ev.state != "away" else f"{ev.login} went away")
        elif isinstance(ev, LinkEvent):
            note("reconnecting…" if ev.state == "reconnecting" else "back in the chat")
        elif isinstance(ev, ErrorEvent):
            note(ev.message)
        elif isinstance(ev, EndedEvent):
            note(f"the chat ended ({ev.reason}{', by ' + ev.by if ev.by else ''})")
            return


async def file_transcript(
    acc: config_mod.AccountConfig,
    session: SessionClient,
    message_id: str,
    subject: str,
    references: tuple[str, ...],
) -> None:
    """File the chat into the account's INBOX, in the thread of ``message_id``."""
    from chmail.client.backends import open_backend

    msg = transcript_mail(
        session.lines,
        me=acc.email or acc.name,
        subject=subject,
        message_id=message_id,
        references=references,
        members=session.members,
    )
    backend = open_backend(acc)
    await backend.connect()
    try:
        await backend.append("INBOX", msg.as_bytes(), flags=("\\Seen",))
    finally:
        await backend.close()
    note("transcript filed in INBOX")
