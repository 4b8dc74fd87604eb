"""``chmail ch``: check the link to the CH server, allocate a chat port by hand.

``--server HOST:PORT --login LOGIN --password-stdin`` override the account's
``[accounts.ch]`` settings (like ``psql -h -p -U``); without them the configured account
(``--account NAME``, else the first) is used.
"""

from __future__ import annotations

import argparse
import email.utils
from typing import Any

from chmail import config as cfgmod
from chmail.client.chlink import ChLink
from chmail.client.cli import print_json, read_password_stdin
from chmail.errors import ChmailError, ConfigError


def register(sub: Any) -> None:
    ch = sub.add_parser("ch", help="the link to the CH server (status, alloc)")
    csub = ch.add_subparsers(dest="ch_command", metavar="ACTION", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--account", metavar="NAME", help="which configured account")
        parser.add_argument("--server", metavar="HOST:PORT", help="CH server (overrides config)")
        parser.add_argument("--login", metavar="LOGIN", help="CH login (overrides config)")
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the CH password from stdin"
        )
        parser.add_argument("--tls", action="store_true", help="use TLS (overrides config)")
        parser.add_argument("--json", action="store_true", help="one JSON document on stdout")

    status = csub.add_parser("status", help="do my CH settings work?")
    common(status)
    status.set_defaults(func=cmd_status)
    alloc = csub.add_parser("alloc", help="allocate a chat port; print the X-CH headers")
    common(alloc)
    alloc.add_argument("--to", action="append", required=True, metavar="ADDR")
    alloc.add_argument("--message-id", metavar="ID", help="the mail's Message-ID (<id@host>)")
    alloc.add_argument(
        "--thread",
        action="append",
        default=[],
        metavar="ID",
        help="Message-IDs this mail replies to (reuses their lease)",
    )
    alloc.add_argument("--context", default="", help="X-CH-Context, e.g. 'campaign=12; sku=A-1'")
    alloc.set_defaults(func=cmd_alloc)


async def _link(args: argparse.Namespace) -> ChLink:
    password = read_password_stdin() if args.password_stdin else None
    if args.server or args.login:
        if not (args.server and args.login):
            raise ConfigError("Give both --server HOST:PORT and --login LOGIN.")
        if password is None:
            raise ConfigError("With --server and --login, give the password with --password-stdin.")
        host, port = cfgmod.parse_hostport(args.server, default_port=7380)
        return ChLink(host, port, args.login, password, tls=args.tls, connect_timeout=10)
    account = cfgmod.load(args.config).account(args.account)
    link = await ChLink.from_account(account, password=password)
    if args.tls:
        link.tls = True
    return link


async def cmd_status(args: argparse.Namespace) -> int:
    try:
        link = await _link(args)
        await link.start()
    except ChmailError as exc:
        if args.json:
            print_json({"ok": False, "code": exc.code, "error": exc.message})
        else:
            print(f"not connected: {exc}")
        return 1
    try:
        if args.json:
            print_json(
                {
                    "ok": True,
                    "server": link.address,
                    "login": link.login,
                    "observed_ip": link.observed_ip,
                    "tls": link.tls,
                }
            )
        else:
            seen = f" (the server sees this machine as {link.observed_ip})"
            print(f"connected as {link.login} to {link.address}{seen}")
    finally:
        await link.close()
    return 0


async def cmd_alloc(args: argparse.Namespace) -> int:
    link = await _link(args)
    await link.start()
    try:
        message_id = args.message_id or email.utils.make_msgid(domain=link.host or None)
        chat = await link.alloc_port(message_id, args.to, thread=args.thread, context=args.context)
    finally:
        await link.close()
    lines = [("Message-ID", message_id), *chat.headers()]
    if args.json:
        print_json(
            {
                "message_id": message_id,
                "headers": dict(lines[1:]),
                "login": chat.login,
                "port": chat.port,
                "host": chat.host,
                "lease": chat.lease,
                "expires": chat.expires,
            }
        )
    else:
        for name, value in lines:
            print(f"{name}: {value}")
    return 0
