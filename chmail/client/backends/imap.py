"""IMAP backend over aioimaplib (with the fixed reader of imap_protocol.py).

Rules:

* One connection runs one command at a time (a lock); every command is bounded by an
  inactivity timeout: no bytes for ``timeout`` seconds and the connection is dropped.
* Security: ``tls`` (IMAPS), ``starttls`` (RFC 3501 6.2.1, refused if not offered), or
  ``plain``, which is allowed only to a loopback host.
* Header sync fetches ``UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (...)]`` with one
  command per ``FETCH_SPAN`` UIDs; messages are parsed as they arrive and handed out in
  batches of ``batch``, reading paused while the caller stores one (imap_protocol.py);
  a FETCH of ``worker_min`` messages or more is parsed in a helper process while the loop
  reads on and stores (parse_worker.py).
  With CONDSTORE (RFC 7162) flag sync asks only for what changed.
* Every aioimaplib or socket error leaves here as MailError / ConnectionLost.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Set
from typing import Any, TypeVar

from aioimaplib import aioimaplib as _aio

from chmail.client import cache_stage
from chmail.client.backends import parse_worker
from chmail.client.backends.base import FolderInfo, FolderState, role_of
from chmail.client.backends.imap_parse import (
    _APPENDUID,
    _CODE_NUM,
    _EXISTS,
    _LIST,
    _UID,
    Every,
    HeaderBatches,
    _copyuid,
    _flags,
    _text,
    _unquote_mailbox,
    mailbox,
    parse_fetch,
    parse_headers_response,
    quote,
    uid_set,
    utf7_decode,
)
from chmail.client.backends.imap_protocol import FastIMAP4, FastProtocol, StreamFetchCommand
from chmail.client.backends.parse_worker import WORKER_MIN, WorkerBatches
from chmail.client.cache_models import Batch
from chmail.client.mime_headers import SYNC_FIELDS
from chmail.errors import AuthError, ConfigError, ConnectionLost, MailError

log = logging.getLogger(__name__)
T = TypeVar("T")

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
BATCH = 2500  # messages per batch handed to the cache (bounded memory, short pauses)
FETCH_SPAN = 50_000  # UIDs per FETCH command (the command line stays short)
SYNC_ITEMS = f"(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({' '.join(SYNC_FIELDS).upper()})])"


class ImapBackend:
    """One IMAP connection for one account."""

    kind = "imap"

    def __init__(
        self,
        account: str,
        *,
        host: str,
        port: int,
        user: str,
        password: str | Callable[[], Awaitable[str]],
        security: str = "tls",
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        batch: int = BATCH,
        parse_worker: bool = True,
        worker_min: int = WORKER_MIN,
    ) -> None:
        if security not in ("tls", "starttls", "plain"):
            raise ConfigError(f"IMAP security must be tls, starttls or plain, not {security!r}.")
        if security == "plain" and host not in LOOPBACK:
            raise ConfigError(
                f"Refusing plain-text IMAP to {host}: passwords would cross the network in the "
                'clear. Use security = "tls" or "starttls" (plain is only for localhost).'
            )
        self.account = account
        self.host, self.port, self.user, self._password = host, port, user, password
        self.security = security
        self.timeout = timeout
        self.batch = batch
        self.parse_worker = parse_worker
        self.worker_min = worker_min
        self._ssl = ssl_context
        self._client: FastIMAP4 | None = None
        self._lock = asyncio.Lock()
        self._selected: str | None = None
        self._exists = 0  # messages in the selected folder, at SELECT
        self.capabilities: set[str] = set()

    # ------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        c = self._client
        return (
            c is not None
            and c.protocol is not None
            and c.protocol.transport is not None
            and (not c.protocol.transport.is_closing())
        )

    def _proto(self) -> FastProtocol:
        if self._client is None:
            raise ConnectionLost(f"Not connected to the IMAP server {self.host}.")
        proto: FastProtocol = self._client.protocol
        return proto

    def _context(self) -> ssl.SSLContext:
        return self._ssl or ssl.create_default_context()

    async def connect(self) -> None:
        await self.close()
        ctx = self._context() if self.security == "tls" else None
        client = FastIMAP4(host=self.host, port=self.port, timeout=self.timeout, ssl_context=ctx)
        self._client = client
        try:
            await client.wait_hello_from_server()
            if self.security == "starttls":
                await self._starttls()
            pw = self._password if isinstance(self._password, str) else await self._password()
            res = await self._guard(client.login(quote(self.user), pw))
        except asyncio.CancelledError:
            await self._drop(client)  # also a connection still being made: never leak it
            raise
        except (OSError, TimeoutError, ssl.SSLError, _aio.AioImapException) as exc:
            await self._drop(client)
            raise ConnectionLost(
                f"Cannot connect to the IMAP server {self.host}:{self.port}: "
                f"{exc or type(exc).__name__}."
            ) from exc
        if res.result != "OK":
            await self._drop(client)
            raise AuthError(
                f"The IMAP server {self.host} refused the login for {self.user!r}: "
                f"{_text(res.lines)}. Check the user name and password."
            )
        # Capabilities may change after login (RFC 3501 6.2.3): ask again.
        await self._guard(client.protocol.capability())
        self.capabilities = {c.upper() for c in client.protocol.capabilities}
        if "CONDSTORE" in self.capabilities and "ENABLE" in self.capabilities:
            await self._guard(client.protocol.run("ENABLE", "CONDSTORE"))
        self._selected = None
        log.info("imap %s@%s:%s connected", self.user, self.host, self.port)

    async def _starttls(self) -> None:
        assert self._client is not None
        proto = self._client.protocol
        if "STARTTLS" not in {c.upper() for c in proto.capabilities}:
            raise ConnectionLost(f"The IMAP server {self.host} does not offer STARTTLS.")
        res = await proto.execute(_aio.Command("STARTTLS", proto.new_tag(), loop=proto.loop))
        if res.result != "OK":
            raise ConnectionLost(f"STARTTLS failed at {self.host}: {_text(res.lines)}.")
        loop = asyncio.get_running_loop()
        proto.transport = await loop.start_tls(
            proto.transport, proto, self._context(), server_hostname=self.host
        )
        await proto.capability()  # RFC 3501 6.2.1: capabilities may change after TLS

    async def close(self) -> None:
        client, self._client = self._client, None
        self._selected = None
        if client is None:
            return
        try:
            if client.protocol.transport is not None and not client.protocol.transport.is_closing():
                await asyncio.wait_for(client.logout(), 2)
        except (OSError, TimeoutError, _aio.AioImapException, asyncio.CancelledError):
            pass
        finally:
            await self._drop(client)  # the socket, or the connection still being made

    async def _guard(self, coro: Awaitable[T]) -> T:
        """Run one command; drop the connection after ``timeout`` s without a byte."""
        task = asyncio.ensure_future(coro)
        proto = self._client.protocol if self._client else None
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.timeout)
                if done:
                    break
                last = max(start, proto.last_rx if proto else 0.0)
                if loop.time() - last >= self.timeout:
                    task.cancel()
                    raise TimeoutError
            return task.result()
        except asyncio.CancelledError:
            task.cancel()
            raise
        except (TimeoutError, OSError, _aio.AioImapException) as exc:
            await self._drop()
            if proto is not None and proto.error is not None:
                raise MailError(str(proto.error)) from exc
            raise ConnectionLost(
                f"The IMAP server {self.host} stopped answering ({type(exc).__name__})."
            ) from exc

    async def _drop(self, client: FastIMAP4 | None = None) -> None:
        """Forget the connection and close its socket (also a half-made one)."""
        client = client or self._client
        self._client = None
        self._selected = None
        if client is None:
            return
        # abort(), not close(): closing TLS waits for the server's close_notify (up to
        # 30 s) with the socket open meanwhile; a socket still open when its loop ends
        # is leaked. Nothing is left to send here (close() logged out first).
        if client.protocol.transport is not None:
            client.protocol.transport.abort()
        task = getattr(client, "_client_task", None)
        if task is not None and not task.done():
            task.cancel()  # a connection still being made
        elif task is not None and not task.cancelled() and task.exception() is None:
            transport, _ = task.result()
            transport.abort()
        await asyncio.sleep(0)  # the transports' close callbacks run: the sockets are shut

    async def _cmd(self, coro_fn: Any, *args: Any, ok: bool = True, **kw: Any) -> Any:
        if not self.connected:
            raise ConnectionLost(f"The connection to the IMAP server {self.host} is closed.")
        res = await self._guard(coro_fn(*args, **kw))
        if ok and res.result != "OK":
            raise MailError(f"The IMAP server {self.host} said: {_text(res.lines)}")
        return res

    async def _select(self, folder: str) -> FolderState:
        proto = self._proto()
        args = [mailbox(folder)]
        if "CONDSTORE" in self.capabilities:
            args.append("(CONDSTORE)")
        res = await self._cmd(proto.run, "SELECT", *args)
        proto.state = _aio.SELECTED
        self._selected = folder
        self._exists = 0
        nums: dict[bytes, int] = {}
        exists = 0
        for line in res.lines:
            if not isinstance(line, bytes):
                continue
            for m in _CODE_NUM.finditer(line):
                nums[m.group(1)] = int(m.group(2))
            e = _EXISTS.match(line)
            if e:
                exists = int(e.group(1))
        self._exists = exists
        return FolderState(
            uidvalidity=nums.get(b"UIDVALIDITY", 0),
            uidnext=nums.get(b"UIDNEXT", 0),
            exists=exists,
            highestmodseq=nums.get(b"HIGHESTMODSEQ", 0),
        )

    async def _ensure(self, folder: str) -> None:
        if self._selected != folder:
            await self._select(folder)

    # ------------------------------------------------------------ Backend

    async def folders(self) -> list[FolderInfo]:
        async with self._lock:
            res = await self._cmd(self._proto().run, "LIST", '""', '"*"')
        out = []
        for line in res.lines[:-1]:
            if not isinstance(line, bytes):
                continue
            # aioimaplib strips "* LIST " from untagged lines of async commands.
            m = _LIST.match(line[5:] if line.startswith(b"LIST ") else line)
            if not m:
                continue
            attrs = m.group(1).decode("ascii", "replace").split()
            delim = m.group(2).strip(b'"').decode() if m.group(2) != b"NIL" else "/"
            name = utf7_decode(_unquote_mailbox(m.group(3)))
            selectable = not any(a.lower() in ("\\noselect", "\\nonexistent") for a in attrs)
            role = "inbox" if name.upper() == "INBOX" else role_of(name, attrs)
            out.append(FolderInfo(name, delim, role, selectable))
        return out

    async def state(self, folder: str) -> FolderState:
        async with self._lock:
            return await self._select(folder)

    async def uids(self, folder: str) -> list[int]:
        async with self._lock:
            await self._ensure(folder)
            res = await self._cmd(self._proto().run, "SEARCH", "ALL", prefix="UID")
        return _search_uids(res.lines)

    async def headers(self, folder: str, uids: list[int] | None) -> AsyncGenerator[Batch, None]:
        """Batches of parsed headers of ``uids`` (None: of every message, one ``1:*``
        FETCH). Close the iterator (``contextlib.aclosing``) if you stop early: a FETCH
        left half-read drops the connection."""
        spans = [uids[i : i + FETCH_SPAN] for i in range(0, len(uids), FETCH_SPAN)] if uids else []
        for part in spans if uids is not None else [None]:
            async with self._lock:
                await self._ensure(folder)
                proto = self._proto()
                wanted: Set[int]
                if part is None:
                    wanted = Every(self._exists)
                elif part[-1] - part[0] + 1 == len(part):  # a run: the FETCH gives just these
                    wanted = Every(len(part))
                else:  # (a range with UIDs the cache has: parsed here, and filtered)
                    wanted = set(part)
                batches = self._batches(wanted)
                which = f"{part[0]}:{part[-1]}" if part is not None else "1:*"
                taker: dict[str, Any] = (
                    {"take_span": batches.take_span, "span_limit": batches.chunk}
                    if isinstance(batches, WorkerBatches)
                    else {"take": batches.take}
                )
                cmd = StreamFetchCommand(
                    proto.new_tag(), which, SYNC_ITEMS,
                    prefix="UID", loop=proto.loop, timeout=None, **taker,
                )  # fmt: skip
                task = asyncio.ensure_future(proto.execute(cmd))
                try:
                    while True:
                        await self._guard(_either(batches.ready, task))
                        if task.done():
                            break
                        if isinstance(batches, WorkerBatches):
                            for batch in batches.drain():
                                yield batch
                        else:
                            yield batches.drain()
                        proto.resume_reading()
                    res = await self._guard(task)
                    if res.result != "OK":
                        raise MailError(f"The IMAP server {self.host} said: {_text(res.lines)}")
                    odd = parse_headers_response(res.lines, batches.wanted)  # other shapes
                finally:
                    if not task.done():  # the caller stopped half-way: the reply is unread
                        task.cancel()
                        await self._drop()
            async for batch in batches.finish():  # what the parse helper still owes
                yield batch
            if odd:
                yield odd

    def _batches(self, wanted: Set[int]) -> HeaderBatches | WorkerBatches:
        """Parsing in the helper process for a big FETCH (parse_worker.py), here otherwise."""
        if (
            self.parse_worker
            and len(wanted) >= self.worker_min
            and isinstance(wanted, Every)
            and cache_stage.IMAGES
        ):
            worker = parse_worker.shared()
            if worker.start():
                return WorkerBatches(wanted, worker, self.batch)
        return HeaderBatches(wanted, self.batch)

    async def flags(self, folder: str, since_modseq: int = 0) -> dict[int, frozenset[str]]:
        async with self._lock:
            await self._ensure(folder)
            proto = self._proto()
            if since_modseq and "CONDSTORE" in self.capabilities:
                res = await self._cmd(proto.fetch_changedsince, "1:*", "(UID FLAGS)", since_modseq)
            else:
                res = await self._cmd(proto.fetch, "1:*", "(UID FLAGS)", by_uid=True)
        out: dict[int, frozenset[str]] = {}
        for attrs, _ in parse_fetch(res.lines):
            m = _UID.search(attrs)
            if m:
                out[int(m.group(1))] = frozenset(_flags(attrs))
        return out

    async def body(self, folder: str, uid: int) -> bytes:
        async with self._lock:
            await self._ensure(folder)
            res = await self._cmd(self._proto().fetch, str(uid), "(UID BODY.PEEK[])", by_uid=True)
        for attrs, literal in parse_fetch(res.lines):
            m = _UID.search(attrs)
            if m and int(m.group(1)) == uid and literal is not None:
                return literal
        raise MailError(f"Message {uid} is no longer in {folder} on {self.host}.")

    async def store_flags(
        self, folder: str, uids: list[int], add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None:
        add, remove = list(add), list(remove)
        if not uids:
            return
        async with self._lock:
            await self._ensure(folder)
            proto = self._proto()
            if add:
                await self._cmd(
                    proto.store, uid_set(uids), "+FLAGS.SILENT", f"({' '.join(add)})", by_uid=True
                )
            if remove:
                await self._cmd(
                    proto.store,
                    uid_set(uids),
                    "-FLAGS.SILENT",
                    f"({' '.join(remove)})",
                    by_uid=True,
                )

    async def move(self, folder: str, uids: list[int], dest: str) -> dict[int, int]:
        if "MOVE" not in self.capabilities:
            mapping = await self.copy(folder, uids, dest)
            await self.expunge(folder, uids)
            return mapping
        async with self._lock:
            await self._ensure(folder)
            proto = self._proto()
            res = await self._cmd(proto.run, "MOVE", uid_set(uids), mailbox(dest), prefix="UID")
        return _copyuid(res.lines)

    async def copy(self, folder: str, uids: list[int], dest: str) -> dict[int, int]:
        async with self._lock:
            await self._ensure(folder)
            res = await self._cmd(
                self._proto().run, "COPY", uid_set(uids), mailbox(dest), prefix="UID"
            )
        return _copyuid(res.lines)

    async def expunge(self, folder: str, uids: list[int]) -> None:
        if not uids:
            return
        await self.store_flags(folder, uids, add=["\\Deleted"])
        async with self._lock:
            await self._ensure(folder)
            proto = self._proto()
            if "UIDPLUS" in self.capabilities:
                await self._cmd(proto.run, "EXPUNGE", uid_set(uids), prefix="UID")
            else:
                await self._cmd(proto.run, "EXPUNGE")

    async def append(
        self, folder: str, raw: bytes, flags: Iterable[str] = (), date: float | None = None
    ) -> int | None:
        async with self._lock:
            proto = self._proto()
            flag_text = f"({' '.join(flags)})" if flags else None
            res = await self._cmd(proto.append, raw, mailbox(folder), flag_text, date)
        if "UIDPLUS" not in self.capabilities:  # APPENDUID is UIDPLUS's (RFC 4315 3)
            return None
        for line in res.lines:
            if isinstance(line, bytes):
                m = _APPENDUID.search(line)
                if m:
                    return int(m.group(1))
        return None

    async def find_message_id(self, folder: str, message_id: str) -> list[int]:
        if not _MESSAGE_ID.fullmatch(message_id):  # it goes into a command line
            raise MailError(f"Not a Message-ID to search for: {message_id!r}.")
        async with self._lock:
            await self._ensure(folder)
            res = await self._cmd(
                self._proto().run, "SEARCH", "HEADER", "Message-ID", quote(message_id),
                prefix="UID",
            )  # fmt: skip
        return _search_uids(res.lines)

    async def create_folder(self, name: str) -> None:
        async with self._lock:
            await self._cmd(self._proto().run, "CREATE", mailbox(name), ok=False)

    async def wait_changes(self, folder: str, seconds: float) -> bool:
        """IDLE (RFC 2177) on ``folder`` until the server pushes something or ``seconds``."""
        async with self._lock:
            await self._ensure(folder)
            client = self._client
            assert client is not None
            if "IDLE" not in self.capabilities:
                res = await self._cmd(self._proto().run, "NOOP")
                return any(b"EXISTS" in ln or b"EXPUNGE" in ln or b"FETCH" in ln
                           for ln in res.lines if isinstance(ln, bytes))  # fmt: skip
            try:
                idle = await asyncio.wait_for(client.idle_start(timeout=seconds + 5), self.timeout)
                try:
                    push = await asyncio.wait_for(client.wait_server_push(), seconds)
                    changed = push != _aio.STOP_WAIT_SERVER_PUSH and any(
                        b"EXISTS" in ln or b"EXPUNGE" in ln or b"FETCH" in ln
                        for ln in push
                        if isinstance(ln, bytes)
                    )
                except TimeoutError:
                    changed = False
                client.idle_done()
                await asyncio.wait_for(idle, self.timeout)
            except (OSError, TimeoutError, _aio.AioImapException) as exc:
                await self._drop()
                raise ConnectionLost(
                    f"IDLE at {self.host} failed: {exc or type(exc).__name__}."
                ) from exc
            if client.protocol.transport is None or client.protocol.transport.is_closing():
                await self._drop()
                raise ConnectionLost(f"The IMAP server {self.host} closed the connection.")
            return changed


_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,246}>")  # no space, quote, CR or LF


def _search_uids(lines: list[Any]) -> list[int]:
    """The UIDs of a UID SEARCH reply, ascending."""
    found: list[int] = []
    for line in lines[:-1]:
        if isinstance(line, bytes):
            # "* SEARCH 1 2 3" arrives as "1 2 3" (aioimaplib strips the name).
            words = line[6:] if line.startswith(b"SEARCH") else line
            found.extend(int(x) for x in words.split() if x.isdigit())
    return sorted(found)


async def _either(event: asyncio.Event, task: asyncio.Future[Any]) -> None:
    """Return when ``event`` is set or ``task`` is done."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
