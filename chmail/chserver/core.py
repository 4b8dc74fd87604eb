"""The control link's own requests: auth (S101), alloc (S103), presence (S113).

Rules:

* ``auth``: the login must match the login rule (said in the error); the password is
  checked with argon2 in a worker thread; a wrong password and an unknown login get the
  same ``auth_failed`` answer and cost the same time; three failures close the link; an
  address with 20 failures in a minute gets ``rate_limited`` until the minute has passed.
  A connection authenticates once.
* ``alloc``: Message-ID, recipients, thread ids and context are validated; the host in
  the link is the server's public name, or the client's advertised host when it logged
  in with ``direct``. The signed lease is answered only after it is committed to
  table 2; allocations arriving together share one commit (see LeaseWriter).
* ``presence``: online state of up to ``MAX_PRESENCE`` valid logins.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import re
import time

from chmail import headers
from chmail import protocol as p
from chmail.chserver.auth import Hasher, valid_login
from chmail.chserver.ports import LEASE_BLOCK, Lease
from chmail.chserver.server import ChServer, Context, Defer
from chmail.chserver.store import LeaseLog, ServerStore
from chmail.errors import HeaderError, ValidationError

log = logging.getLogger(__name__)

MAX_AUTH_FAILURES = 3  # per connection, then it is closed
IP_FAILURES = 20  # failed logins from one address within IP_WINDOW ...
IP_WINDOW = 60.0  # ... after which that address gets rate_limited until the window clears
MAX_TRACKED_IPS = 10_000
MAX_RECIPIENTS = 1000
MAX_THREAD = 200
MAX_PRESENCE = 1000
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 (path) minus the angle brackets
_ADDRESS = re.compile(r"[^\s@<>\"]{1,64}@[^\s@<>\"]{1,253}")
LEASE_COUNTER = "lease_reserved"
CHECKPOINT_EVERY = 1000  # table-2 commits between WAL checkpoints (in the worker thread)


class LeaseWriter:
    """Group commit for table 2: nothing acknowledged is lost.

    An allocation is decided in memory (the pool), queued here with its reply, and the
    reply is sent only once the lease is committed. Allocations that arrive together
    (in the same turn of the event loop, or while a previous write waits for the
    database lock) are committed in one transaction; a lone one is committed at once.
    There is no timer. Writes happen in order: a batch starts only after the previous
    one has committed.
    """

    def __init__(self, store: ServerStore) -> None:
        self.log = LeaseLog(store.path)
        self._batch: dict[int, Lease] = {}
        self._waiting: list[tuple[Context, p.Message]] = []
        self._scheduled = False
        self._busy = False  # a write is in the worker thread
        self._commits = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "chserver-leases")

    def submit(self, lease: Lease, ctx: Context, reply: p.Message) -> None:
        """Commit ``lease`` with the next batch, then send ``reply`` on ``ctx``."""
        self._batch[lease.port] = lease
        self._waiting.append((ctx, reply))
        self._idle.clear()
        if not self._scheduled and not self._busy:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    async def flush(self) -> None:
        """Wait until every lease submitted so far is on disk."""
        await self._idle.wait()

    async def close(self) -> None:
        await self._idle.wait()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.log.checkpoint)
        self._thread.shutdown()
        self.log.close()

    def _commit(self) -> None:
        self._scheduled = False
        if self._busy or not self._batch:
            return
        leases, waiting = list(self._batch.values()), self._waiting
        self._batch, self._waiting = {}, []
        try:
            done = self.log.write_now(leases)
        except Exception as exc:
            self._answer(waiting, exc)
            return
        if done:
            self._answer(waiting, None)
            return
        self._busy = True  # another connection holds the lock: wait for it off the loop
        fut = asyncio.get_running_loop().run_in_executor(self._thread, self.log.write_wait, leases)
        fut.add_done_callback(lambda f: self._waited(f, waiting))

    def _waited(self, fut: asyncio.Future[None], waiting: list[tuple[Context, p.Message]]) -> None:
        self._busy = False
        exc = fut.exception()
        self._answer(waiting, exc if isinstance(exc, Exception) else None)

    def _answer(self, waiting: list[tuple[Context, p.Message]], exc: Exception | None) -> None:
        if exc is not None:
            log.error("writing table 2 failed: %s", exc)
        for ctx, reply in waiting:
            if exc is None:
                ctx.send(reply)
            else:
                msg = "the server could not record the allocation; try again"
                ctx.send(p.Error(code=p.E_INTERNAL, message=msg, id=getattr(reply, "id", None)))
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            asyncio.get_running_loop().run_in_executor(self._thread, self.log.checkpoint)
        if self._batch:
            self._commit()  # what arrived meanwhile: the next group
        else:
            self._idle.set()


class Core:
    def __init__(self, server: ChServer, hasher: Hasher) -> None:
        self.server = server
        self.hasher = hasher
        self.writer = LeaseWriter(server.store)
        self._failures: dict[str, collections.deque[float]] = {}

    def install(self) -> None:
        s = self.server
        s.register("auth", self.auth)
        s.register("alloc", self.alloc)
        s.register("presence", self.presence)
        s.register_sync("alloc", self.alloc_now)
        s.extensions["core"] = self

        async def start() -> None:
            s.pool.reserved = await s.store.counter(LEASE_COUNTER)

        s.on_start(start)
        s.add_closer(self.writer.close)

    async def auth(self, ctx: Context, msg: p.Auth) -> p.Message | None:
        if ctx.login is not None:
            raise ValidationError(f"already logged in as {ctx.login}", code=p.E_INVALID)
        if ctx.authenticating:
            raise ValidationError("a login is already in progress", code=p.E_INVALID)
        try:
            login = valid_login(msg.login)
        except ValidationError as exc:
            raise ValidationError(exc.message, code=p.E_INVALID) from None
        host = msg.host
        if host:
            try:
                headers.check_host(host)
            except HeaderError as exc:
                raise ValidationError(f"advertised host: {exc.message}", code=p.E_INVALID) from None
        elif msg.direct:
            raise ValidationError("direct mode needs an advertised host", code=p.E_INVALID)
        if self._throttled(ctx.peer_ip):
            raise ValidationError(
                "too many failed logins from this address; wait a minute", code=p.E_RATE_LIMITED
            )
        ctx.authenticating = True
        try:
            stored = await self.server.store.get_hash(login)
            ok = await self.hasher.verify_async(stored, msg.password)
        finally:
            ctx.authenticating = False
        if not ok or ctx.closed:
            ctx.auth_failures += 1
            self._failures.setdefault(ctx.peer_ip, collections.deque()).append(time.monotonic())
            if len(self._failures) > MAX_TRACKED_IPS:  # many addresses: forget the quiet ones
                for ip in list(self._failures):
                    self._throttled(ip)
            log.info("conn %d: failed login as %s from %s", ctx.id, login, ctx.peer_ip)
            err = p.Error(
                code=p.E_AUTH_FAILED,
                message=f"wrong login or password for {login!r}",
                id=msg.id,
            )
            ctx.send(err)
            if ctx.auth_failures >= MAX_AUTH_FAILURES:
                ctx.close("too many failed logins")
            return None
        ctx.login = login
        ctx.host = host
        ctx.direct = msg.direct
        await self.server.registry.attach(
            ctx, host=host or ctx.peer_ip, observed_ip=ctx.peer_ip, direct=msg.direct
        )
        cfg = self.server.config
        ctx.send(
            p.AuthOk(
                id=msg.id,
                login=login,
                observed_ip=ctx.peer_ip,
                heartbeat=cfg.heartbeat_interval,
                timeout=cfg.heartbeat_timeout,
            )
        )
        log.info("conn %d: %s logged in from %s", ctx.id, login, ctx.peer_ip)
        for hook in self.server.auth_hooks:
            try:
                await hook(ctx)
            except Exception:
                log.exception("auth hook failed")
        return None

    def _throttled(self, ip: str) -> bool:
        """Has ``ip`` failed IP_FAILURES logins within the last IP_WINDOW seconds?"""
        recent = self._failures.get(ip)
        if recent is None:
            return False
        cutoff = time.monotonic() - IP_WINDOW
        while recent and recent[0] < cutoff:
            recent.popleft()
        if not recent:
            del self._failures[ip]
            return False
        return len(recent) >= IP_FAILURES

    async def alloc(self, ctx: Context, msg: p.Alloc) -> p.Message | None:
        """The slow path: reserve the next block of lease numbers on disk first."""
        pool = self.server.pool
        while pool.needs_reservation():
            pool.reserved = await self.server.store.raise_counter(
                LEASE_COUNTER, pool.next_lease + LEASE_BLOCK - 1
            )
        return self.alloc_now(ctx, msg)

    def alloc_now(self, ctx: Context, msg: p.Alloc) -> p.Message | None:
        """The fast path, inline in the dispatcher while lease numbers are reserved."""
        if self.server.pool.needs_reservation():
            raise Defer
        login = ctx.require_login()
        try:
            message_id = headers.check_message_id(msg.message_id)
            context = headers.check_context(msg.context)
            thread = [headers.check_message_id(t) for t in msg.thread[:MAX_THREAD]]
        except HeaderError as exc:
            raise ValidationError(exc.message, code=p.E_INVALID) from None
        recipients = check_recipients(msg.recipients)
        host = ctx.host if ctx.direct and ctx.host else self.server.public_host
        grant = self.server.pool.alloc(
            login=login,
            host=host,
            message_id=message_id,
            recipients=recipients,
            thread=thread,
            context=context,
            now=int(time.time()),
        )
        lease = grant.lease
        link = headers.sign(
            self.server.key,
            login=login,
            port=lease.port,
            host=lease.host,
            lease=lease.lease,
            expires=grant.expires,
            message_id=message_id,
            context=context,
        )
        if grant.recycled_from is not None:
            log.info(
                "port %d recycled: lease %d -> %d", lease.port, grant.recycled_from, lease.lease
            )
        reply = p.Allocated(
            id=msg.id,
            login=login,
            port=link.port,
            host=link.host,
            lease=link.lease,
            expires=link.expires,
            sig=link.sig,
            context=link.context,
        )
        self.writer.submit(lease, ctx, reply)  # answered once committed
        return None

    async def presence(self, ctx: Context, msg: p.Presence) -> p.Message | None:
        ctx.require_login()
        if len(msg.logins) > MAX_PRESENCE:
            raise ValidationError(f"ask for at most {MAX_PRESENCE} logins", code=p.E_LIMIT)
        online: dict[str, bool] = {}
        for login in msg.logins:
            try:
                online[valid_login(login)] = self.server.is_online(login)
            except ValidationError as exc:
                raise ValidationError(exc.message, code=p.E_INVALID) from None
        return p.PresenceOk(id=msg.id, online=online)


def check_recipients(recipients: list[str]) -> list[str]:
    if not recipients:
        raise ValidationError("a mail needs at least one recipient", code=p.E_INVALID)
    if len(recipients) > MAX_RECIPIENTS:
        raise ValidationError(f"at most {MAX_RECIPIENTS} recipients per mail", code=p.E_LIMIT)
    out = []
    for addr in recipients:
        if len(addr) > MAX_ADDRESS or not _ADDRESS.fullmatch(addr) or not addr.isprintable():
            shown = repr(addr[:60])
            raise ValidationError(f"{shown} is not an e-mail address", code=p.E_INVALID)
        out.append(addr.lower())
    return out
