"""``chmail sync | send | search | show | devmail``: the mail engine from the command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from pathlib import Path
from typing import Any

from chmail import config as cfgmod
from chmail.client import cache_outbox as store
from chmail.client import mime
from chmail.client.accounts import open_account
from chmail.client.cache import Cache, Message
from chmail.client.cli import print_json
from chmail.client.safe_text import block, one_line
from chmail.errors import ChmailError, ConnectionLost, MailError, SendError


def register(sub: Any) -> None:
    p = sub.add_parser("sync", help="fetch new mail into the local cache")
    p.add_argument("--account", metavar="NAME", help="only this account (default: all)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("send", help="send a mail; the body is read from standard input")
    p.add_argument("--account", metavar="NAME", help="send from this account (default: first)")
    p.add_argument("--to", action="append", default=[], metavar="ADDR", required=True)
    p.add_argument("--cc", action="append", default=[], metavar="ADDR")
    p.add_argument("--bcc", action="append", default=[], metavar="ADDR")
    p.add_argument("--subject", default="", metavar="TEXT")
    p.add_argument("--attach", action="append", default=[], metavar="FILE")
    p.add_argument("--in-reply-to", metavar="MESSAGE-ID", help="reply to this cached mail")
    p.add_argument("--queue-only", action="store_true", help="queue; do not try to send now")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("search", help="search the local cache")
    p.add_argument("query", help='words (prefixes), "phrases", from: to: subject: body: is:unread')
    p.add_argument("--account", metavar="NAME")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", help="print a mail from the cache (fetched if needed)")
    p.add_argument("message_id", metavar="MESSAGE-ID")
    p.add_argument("--account", metavar="NAME")
    p.add_argument("--raw", action="store_true", help="the raw source, byte for byte")
    p.add_argument("--save-attachments", metavar="DIR", help="save its attachments into DIR")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "devmail",
        help="run a local mail server (SMTP + Dovecot IMAP/POP3) for trying chmail",
        description="Start an SMTP server on 127.0.0.1 that delivers to per-user Maildirs, "
        "and a Dovecot serving them over IMAP and POP3 when Dovecot is installed. "
        "Runs until interrupted.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="where the Maildirs live")
    p.add_argument("--user", action="append", default=[], metavar="NAME[:PASSWORD]",
                   help="a mailbox (default: alice, bob, carol; password NAMEpw)")  # fmt: skip
    p.add_argument("--smtp-port", type=int, default=0, metavar="PORT", help="default: any free")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="give each user N demo mails")
    p.add_argument("--no-dovecot", action="store_true", help="Maildirs only")
    p.set_defaults(func=cmd_devmail)


def _bar(done: int, total: int, label: str) -> None:
    width = 30
    filled = width if not total else int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {label[:30]:30}")
    sys.stderr.flush()


async def cmd_sync(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config)
    accounts = [cfg.account(args.account)] if args.account else list(cfg.accounts)
    if not accounts:
        cfg.account()  # raises the "no account" sentence
    cache = await Cache.open()
    failed = 0
    try:
        for acc in accounts:
            account = await open_account(acc, cache, watcher=False)
            try:
                await account.backend.connect()
                account.syncer.online = True
                await account.sync(lambda d, t, f, a=acc.name: _bar(d, t, f"{a}/{f}"))
                sys.stderr.write("\n")
                for f in await cache.folders(acc.name):
                    print(f"{acc.name}/{f.name}: {f.total} messages, {f.unread} unread")
            except ChmailError as exc:
                sys.stderr.write("\n")
                print(f"chmail: {acc.name}: {exc}", file=sys.stderr)
                failed += 1
            finally:
                await account.close()
    finally:
        await cache.close()
    return 1 if failed else 0


async def cmd_send(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config)
    acc = cfg.account(args.account)
    body = sys.stdin.read()
    cache = await Cache.open()
    link = None
    try:
        from chmail.client.accounts import password
        from chmail.client.outbox import Outbox, smtp_target

        references: list[str] = []
        subject = args.subject
        if args.in_reply_to:
            parent = await cache.by_message_id(args.in_reply_to, acc.name)
            if parent is None:
                raise MailError(f"No mail {args.in_reply_to} in the cache; run `chmail sync`.")
            references = [*parent.references, parent.message_id]
            subject = subject or f"Re: {parent.subject}"
        allocator: Any = None
        if acc.ch.server:
            from chmail.client.chlink import ChLink

            link = await ChLink.from_account(acc)
            try:
                await asyncio.wait_for(link.start(), 10)
                allocator = link
            except (ChmailError, OSError, TimeoutError) as exc:
                # Tell the outbox at once (it sends without a chat link, or holds the mail
                # with wait_for_link) instead of waiting out the link's request timeout.
                allocator = _LinkDown(exc)
        account = await open_account(acc, cache, watcher=False)

        async def smtp_pw() -> str:
            return await password(acc, "smtp", acc.smtp)

        notes: list[str] = []
        box = Outbox(cache, acc, smtp_target(acc, smtp_pw if acc.smtp.user else ""),
                     allocator=allocator, notify=lambda mid, text: notes.append(text))  # fmt: skip
        mid = await box.send(
            to=args.to, cc=args.cc, bcc=args.bcc, subject=subject, body=body,
            in_reply_to=args.in_reply_to, references=references, attachments=args.attach,
        )  # fmt: skip
        if args.queue_only:
            print(f"queued {mid}")
            return 0
        try:
            await account.backend.connect()
            box.sent_store = account.backend
        except ChmailError as exc:
            notes.append(f"The mail will not be copied to Sent now: {exc}")
        await box.flush()
        await account.close()
        item = await box.status(mid)
        for n in notes:
            print(f"chmail: {n}", file=sys.stderr)
        assert item is not None
        if item.state == store.FAILED:
            raise SendError(item.last_error, permanent=True)
        if item.state in store.ACTIVE and item.state != store.SENT:
            print(f"queued {mid}: not sent yet ({item.last_error}); `chmail send` retries later")
            return 1
        print(f"sent {mid}" + (" (with chat link)" if item.ch_status == "stamped" else ""))
        return 0
    finally:
        if link is not None:
            await link.close()
        await cache.close()


class _LinkDown:
    """An allocator for when the CH server could not be reached at all."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def alloc_port(self, *args: Any, **kw: Any) -> Any:
        raise ConnectionLost(
            f"the CH server is unreachable ({self.exc or type(self.exc).__name__})"
        )


def _row(m: Message) -> dict[str, Any]:
    return {
        "account": m.account, "folder": m.folder, "uid": m.uid, "message_id": m.message_id,
        "date": dt.datetime.fromtimestamp(m.date, dt.UTC).isoformat() if m.date else None,
        "from": f"{m.from_name} <{m.from_addr}>" if m.from_name else m.from_addr,
        "to": m.to, "subject": m.subject, "flags": sorted(m.flags), "chat": m.has_ch,
    }  # fmt: skip


async def cmd_search(args: argparse.Namespace) -> int:
    cache = await Cache.open()
    try:
        found = await cache.search(args.query, args.limit, account=args.account)
    finally:
        await cache.close()
    if args.json:
        print_json([_row(m) for m in found])
        return 0
    for m in found:
        when = dt.datetime.fromtimestamp(m.date).strftime("%Y-%m-%d %H:%M") if m.date else "-"
        sender, subject = one_line(m.sender[:24]), one_line(m.subject[:60])
        print(f"{when}  {sender:24}  {subject:60}  {one_line(m.message_id)}")
    if not found:
        print("no match", file=sys.stderr)
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config)
    cache = await Cache.open()
    try:
        msg = await cache.by_message_id(args.message_id, args.account)
        if msg is None:
            raise MailError(f"No mail {args.message_id} in the cache; run `chmail sync` first.")
        raw = await cache.body(msg.pk)
        if raw is None:
            account = await open_account(cfg.account(msg.account), cache, watcher=False)
            try:
                await account.backend.connect()
                raw = await account.syncer.open_body(msg.pk)
            finally:
                await account.close()
    finally:
        await cache.close()
    if args.raw:  # (exactly as it came, for a pipe: not made safe for a terminal)
        sys.stdout.buffer.write(raw)
        return 0
    p = mime.parse(raw)  # shown, its control characters as visible stand-ins (safe_text)
    for name in ("Date", "From", "To", "Cc", "Subject", "Message-ID"):
        value = p.header(name)
        if value:
            print(f"{name}: {one_line(value)}")
    link = [(n, v) for n, v in p.raw_headers if n.lower().startswith("x-ch-")]
    if link:
        chat = ", ".join(f"{n}={v}" for n, v in link if n.lower() != "x-ch-sig")
        print("Chat: " + one_line(chat))
    print()
    print(block(p.text.rstrip("\n")))
    if p.attachments:
        print()
        for a in p.attachments:
            about = f"{a.filename} ({a.content_type}, {a.size} bytes)"
            print(f"[attachment {a.index}] {one_line(about)}")
    if args.save_attachments:
        for a in p.attachments:
            print(f"saved {mime.save_attachment(raw, a, args.save_attachments)}", file=sys.stderr)
    if p.defects:
        print(f"\n(note: this mail is malformed: {', '.join(p.defects[:3])})", file=sys.stderr)
    return 0


async def cmd_devmail(args: argparse.Namespace) -> int:
    from chmail.devmail.stack import DEFAULT_USERS, DevMail

    users = dict(DEFAULT_USERS)
    if args.user:
        users = {}
        for spec in args.user:
            name, _, pw = spec.partition(":")
            users[name] = pw or f"{name}pw"
    stack = DevMail(Path(args.data), users=users, use_dovecot=not args.no_dovecot,
                    smtp_port=args.smtp_port)  # fmt: skip
    await stack.start()
    try:
        if args.seed:
            for u in users:
                await stack.seed(u, args.seed)
        print("chmail devmail is running (Ctrl-C stops it)")
        print(stack.describe())
        first = next(iter(users))
        print(f"\nPoint chmail at it, e.g. in config.toml:\n\n{stack.config_snippet(first)}")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await stack.stop()
    return 0
