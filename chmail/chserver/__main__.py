"""``chmail-server``: run the CH server and look after its users and tables.

Every subcommand takes ``--data DIR`` (default: ``[server] data_dir``, else the XDG data
location ``~/.local/share/chmail/server``). Errors are sentences on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import email.parser
import email.policy
import fcntl
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chmail import __version__, headers
from chmail import config as cfgmod
from chmail.chserver.app import build_server, default_data_dir, hasher_for, tls_context
from chmail.chserver.auth import check_password, valid_login
from chmail.chserver.keys import ensure_data_dir, read_key
from chmail.chserver.store import ServerStore
from chmail.config import ServerConfig
from chmail.errors import ChmailError, ConfigError, HeaderError, ValidationError

log = logging.getLogger(__name__)

_EMAIL = re.compile(r"[^\s@<>\"(),;:]{1,64}@[A-Za-z0-9.-]{1,253}")

EPILOG = """\
examples:
  chmail-server serve --data /var/lib/chmail-server --listen 0.0.0.0:7380 \\
      --public-host ch.example.net --ports 41000-41999
  echo 'secret' | chmail-server user add alice --email alice@example.net --password-stdin
  chmail-server tables --json
  chmail-server check-headers received.eml
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", metavar="DIR", help="the server's data directory")
    common.add_argument("--config", metavar="FILE", help="config file (TOML; [server] section)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more to stderr")
    parser = argparse.ArgumentParser(
        prog="chmail-server",
        description="The CH server: tables of who is where, signed chat-port leases.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chmail-server {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on")
    serve.add_argument("--ports", metavar="LOW-HIGH", help="the chat port pool")
    serve.add_argument("--public-host", metavar="NAME", help="host name put in X-CH-Host")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="add, list, change or remove users")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", parents=[common], help="add a user")
    add.add_argument("login")
    add.add_argument("--email", action="append", required=True, metavar="ADDR")
    add.add_argument("--password-stdin", action="store_true", help="read the password (1 line)")
    add.set_defaults(func=cmd_user_add)
    lst = usub.add_parser("list", parents=[common], help="list users")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_user_list)
    pw = usub.add_parser("passwd", parents=[common], help="set a user's password")
    pw.add_argument("login")
    pw.add_argument("--password-stdin", action="store_true", help="read the password (1 line)")
    pw.set_defaults(func=cmd_user_passwd)
    rm = usub.add_parser("remove", parents=[common], help="remove a user")
    rm.add_argument("login")
    rm.set_defaults(func=cmd_user_remove)

    tables = sub.add_parser("tables", parents=[common], help="show table 1 and table 2")
    tables.add_argument("--json", action="store_true")
    tables.set_defaults(func=cmd_tables)

    check = sub.add_parser(
        "check-headers", parents=[common], help="are a mail's X-CH headers valid here?"
    )
    check.add_argument("file", metavar="FILE.eml")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check_headers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(asyncio.run(args.func(args)) or 0)
    except ChmailError as exc:
        print(f"chmail-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> tuple[ServerConfig, Path]:
    server = cfgmod.load(args.config).server
    data = Path(args.data) if args.data else default_data_dir(server)
    return server, data


async def _store(args: argparse.Namespace) -> ServerStore:
    _, data = _config(args)
    return await ServerStore.open(ensure_data_dir(data))


def _password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise ValidationError(
            "Give the password on standard input with --password-stdin "
            "(never on the command line, where other users could see it)."
        )
    return check_password(sys.stdin.readline().rstrip("\r\n"))


def _emails(values: list[str]) -> list[str]:
    out = []
    for value in values:
        if len(value) > 254 or not _EMAIL.fullmatch(value):
            raise ValidationError(f"{value[:80]!r} is not an e-mail address like name@example.org.")
        out.append(value.lower())
    return out


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------- serve


async def cmd_serve(args: argparse.Namespace) -> int:
    config, data = _config(args)
    changes: dict[str, Any] = {}
    if args.listen:
        changes["listen"] = args.listen
    if args.ports:
        changes["ports"] = args.ports
    if args.public_host:
        changes["public_host"] = args.public_host
    config = dataclasses.replace(config, **changes)
    host, port = cfgmod.parse_hostport(config.listen, default_port=7380)
    cfgmod.parse_port_range(config.ports)
    headers.check_host(config.public_host)
    lock = _lock(ensure_data_dir(data))
    try:
        server = await build_server(config, data)
        try:
            bound = await server.start(host, port, ssl_context=tls_context(config))
            print(f"listening on {_hostport(*bound)}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            log.info("stopping")
        finally:
            await server.stop()
    finally:
        os.close(lock)
    return 0


def _lock(data: Path) -> int:
    """One server per data directory: the pool of ports lives in its memory."""
    fd = os.open(data / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"Another chmail-server is already running on the data directory {data}."
        ) from None
    return fd


# ----------------------------------------------------------------------------- users


async def cmd_user_add(args: argparse.Namespace) -> int:
    login = valid_login(args.login)
    emails = _emails(args.email)
    password = _password(args)
    config, _ = _config(args)
    store = await _store(args)
    try:
        phash = await asyncio.to_thread(hasher_for(config).hash, password)
        await store.add_user(login, phash, emails, int(time.time()))
    finally:
        await store.close()
    print(f"added {login} ({', '.join(emails)})")
    return 0


async def cmd_user_list(args: argparse.Namespace) -> int:
    store = await _store(args)
    try:
        users = await store.users()
    finally:
        await store.close()
    if args.json:
        _print_json(
            [
                {"login": u.login, "emails": list(u.emails), "created_at": u.created_at}
                for u in users
            ]
        )
        return 0
    for u in users:
        print(f"{u.login:<32} {', '.join(u.emails)}")
    return 0


async def cmd_user_passwd(args: argparse.Namespace) -> int:
    login = valid_login(args.login)
    password = _password(args)
    config, _ = _config(args)
    store = await _store(args)
    try:
        phash = await asyncio.to_thread(hasher_for(config).hash, password)
        if not await store.set_password(login, phash):
            raise ValidationError(f"There is no user {login!r}.")
    finally:
        await store.close()
    print(f"password of {login} changed")
    return 0


async def cmd_user_remove(args: argparse.Namespace) -> int:
    login = valid_login(args.login)
    store = await _store(args)
    try:
        if not await store.remove_user(login):
            raise ValidationError(f"There is no user {login!r}.")
    finally:
        await store.close()
    print(f"removed {login}")
    return 0


# ----------------------------------------------------------------------------- tables


async def cmd_tables(args: argparse.Namespace) -> int:
    store = await _store(args)
    try:
        logins = await store.login_rows()
        leases = await store.leases()
    finally:
        await store.close()
    if args.json:
        _print_json(
            {
                "logins": [dataclasses.asdict(r) for r in logins],
                "ports": [x.to_json() for x in leases],
            }
        )
        return 0
    print("table 1: logins")
    print(f"  {'login':<20} {'host':<28} {'observed ip':<18} {'last seen':<20} online")
    for r in logins:
        print(
            f"  {r.login:<20} {r.host:<28} {r.observed_ip:<18} {_when(r.last_seen):<20} "
            f"{'yes' if r.online else 'no'}"
        )
    print("table 2: ports")
    print(f"  {'port':<6} {'login':<20} {'lease':<6} {'expires':<20} message-id -> recipients")
    for x in leases:
        print(
            f"  {x.port:<6} {x.login:<20} {x.lease:<6} {_when(x.expires):<20} "
            f"{x.message_id} -> {', '.join(x.recipients)}"
        )
    return 0


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# ----------------------------------------------------------------------------- check-headers


async def cmd_check_headers(args: argparse.Namespace) -> int:
    _, data = _config(args)
    key = read_key(data)
    try:
        raw = await asyncio.to_thread(Path(args.file).read_bytes)
    except OSError as exc:
        raise ConfigError(f"Cannot read {args.file}: {exc.strerror}.") from exc
    # compat32 keeps raw header values: nothing decodes encoded words behind our back.
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    result: dict[str, Any] = {"valid": False, "reason": None, "explanation": ""}
    try:
        link = headers.parse((k, str(v)) for k, v in msg.items())
    except HeaderError as exc:
        result.update(reason="malformed", explanation=exc.message)
        return _report(args, result)
    if link is None:
        result.update(reason="missing", explanation="the mail carries no X-CH headers")
        return _report(args, result)
    message_id = str(msg.get("Message-ID", "")).strip()
    result.update(
        login=link.login,
        port=link.port,
        host=link.host,
        lease=link.lease,
        expires=link.expires,
        message_id=message_id,
    )
    store = await ServerStore.open(data)
    try:
        lease = await store.lease(link.port)
    finally:
        await store.close()
    reason = headers.verify(
        link,
        message_id=message_id,
        key=key,
        record=lease.record() if lease else None,
        now=time.time(),
    )
    if reason is None:
        result.update(valid=True, explanation="the chat link is valid for this server")
    else:
        result.update(reason=reason.removeprefix("link_"), explanation=headers.REASONS[reason])
    return _report(args, result)


def _report(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        _print_json(result)
    elif result["valid"]:
        print(f"valid: {result['explanation']}")
    else:
        print(f"invalid ({result['reason']}): {result['explanation']}")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
