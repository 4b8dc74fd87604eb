"""The control link's own requests: auth (S101), alloc (S103), presence (S113).

Rules:

* ``auth``: the login must match the login rule (said in the error); the password is
  checked with argon2 in a worker thread; a wrong password and an unknown login get the
  same ``auth_failed`` answer and cost the same time; three failures close the link;
  too many failures from an address or for a login get ``rate_limited`` (access.py).
  A connection authenticates once. A user removed meanwhile is refused and, if
  connected, disconnected (``watch_users``).
* ``alloc``: Message-ID, recipients, thread ids and context are validated; the host in
  the link is the server's public name, or the client's advertised host when it logged
  in with ``direct``. The signed lease is answered only after it is committed to
  table 2; allocations arriving together share one commit (see LeaseWriter).
* ``presence``: online state of up to ``MAX_PRESENCE`` valid logins, told only for
  logins related to the asker by chat-link mail (access.related); others read offline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time

from chmail import headers
from chmail import protocol as p
from chmail.chserver.access import (
    IP_FAILURES,
    IP_WINDOW,
    FailureWindow,
    related,
)
from chmail.chserver.auth import Hasher, valid_login
from chmail.chserver.leasestore import LEASE_COUNTER as LEASE_COUNTER  # app.py's name for it
from chmail.chserver.leasestore import LeaseStore
from chmail.chserver.ports import LEASE_BLOCK, Lease, PortPool
from chmail.chserver.server import ChServer, Context
from chmail.chserver.store import USERS_REMOVED
from chmail.errors import HeaderError, StoreError, ValidationError

log = logging.getLogger(__name__)

MAX_AUTH_FAILURES = 3  # per connection, then it is closed
USER_CHECK_INTERVAL = 1.0  # seconds between looks for removed users (one tiny query)
MAX_RECIPIENTS = 1000
MAX_THREAD = 200
MAX_PRESENCE = 1000
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 (path) minus the angle brackets
_ADDRESS = re.compile(r"[^\s@<>\"]{1,64}@[^\s@<>\"]{1,253}")
CHECKPOINT_EVERY = 256  # lease commits between WAL checkpoints (in a worker thread)


class LeaseWriter:
    """Group commit for table 2: nothing acknowledged is lost.

    An allocation is decided in memory (the pool), queued here with its reply, and the
    reply is sent only once the lease is committed. The first read of a loop turn that
    queued allocations commits them as soon as its frames are dispatched (``read_done``,
    a read hook of the server: a lone allocation is answered without waiting for another
    loop turn); allocations from later reads of the same turn are committed together,
    in one transaction, at the start of the next turn (``call_soon``, scheduled after
    the inline commit and its replies: no timer), so a busy turn costs at most two
    commits. Allocations submitted outside a read (``schedule``) wait for that one.
    The commit runs on the event loop's thread, on a connection that only writes the
    lease file (leasestore.py), so it costs tens of microseconds and waits for nobody.
    A new block of lease numbers is reserved in the same transaction as the leases
    using it. Every ``CHECKPOINT_EVERY`` commits the WAL is checkpointed in a worker
    thread.
    """

    def __init__(self, db: LeaseStore, pool: PortPool) -> None:
        self.db = db
        self.pool = pool
        self._on_disk = db.reserved()  # lease_reserved as committed
        self._batch: dict[int, Lease] = {}
        self._waiting: list[tuple[Context, int, bytes]] = []  # (ctx, request id, reply)
        self._scheduled = False
        self._inline_done = False  # this turn's inline commit has been used
        self._commits = 0  # since the last checkpoint
        self._checkpoint: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, lease: Lease, ctx: Context, req_id: int, reply: bytes) -> None:
        """Commit ``lease`` with this turn's batch, then send the frame ``reply`` on
        ``ctx`` (or, if the commit fails, an ``error`` answering ``req_id``)."""
        self._batch[lease.port] = lease
        self._waiting.append((ctx, req_id, reply))

    def read_done(self) -> None:
        """After one read's frames: commit (and answer) now, once per loop turn; the
        next turn commits what later reads of this turn submit."""
        if not self._batch:
            return
        if not self._inline_done:
            self._inline_done = True
            self._save()
        self.schedule()

    def schedule(self) -> None:
        """Commit at the start of the next loop turn (for submissions outside a read,
        which no ``read_done`` follows; and to free the next turn's inline commit)."""
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:  # kept: get_running_loop() makes a system call (3.11)
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._commit)

    async def flush(self) -> None:
        """Commit (and answer) every lease submitted so far."""
        self._commit()

    async def close(self) -> None:
        self._commit()
        if self._checkpoint is not None:
            await self._checkpoint

    def _commit(self) -> None:
        self._scheduled = False
        self._inline_done = False
        self._save()

    def _save(self) -> None:
        if not self._batch:
            return
        leases, waiting = list(self._batch.values()), self._waiting
        self._batch, self._waiting = {}, []
        reserved = self.pool.reserved
        try:
            self.db.save(leases, reserved if reserved > self._on_disk else None)
        except Exception as exc:  # every waiting client gets an answer, whatever failed
            if isinstance(exc, StoreError):
                log.error("%s", exc.message)
            else:
                log.exception("writing table 2 failed")
            msg = "the server could not record the allocation; try again"
            for ctx, req_id, _ in waiting:
                ctx.send(p.Error(code=p.E_INTERNAL, message=msg, id=req_id))
            return
        self._on_disk = max(self._on_disk, reserved)
        for ctx, _, reply in waiting:
            ctx.send_frame(reply)
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits = 0
            fut = asyncio.get_running_loop().run_in_executor(None, self.db.checkpoint)
            fut.add_done_callback(self._checkpointed)
            self._checkpoint = fut

    def _checkpointed(self, fut: asyncio.Future[None]) -> None:
        self._checkpoint = None


class Core:
    def __init__(self, server: ChServer, hasher: Hasher) -> None:
        self.server = server
        self.hasher = hasher
        self.writer = LeaseWriter(server.store.leasedb, server.pool)
        self.ip_failures = FailureWindow(IP_FAILURES, IP_WINDOW)
        cfg = server.config
        self.login_failures = FailureWindow(
            max(1, cfg.login_lockout_failures), max(0.0, cfg.login_lockout_minutes) * 60
        )
        self._users_removed = 0
        self._public_host: str | None = None  # server.public_host once checked (links carry it)

    def install(self) -> None:
        s = self.server
        s.register("auth", self.auth)
        s.register("alloc", self.alloc)
        s.register("presence", self.presence)
        s.register_sync("alloc", self.alloc_now)
        s.on_read_done(self.writer.read_done)
        s.extensions["core"] = self

        async def start() -> None:
            self._users_removed = await s.store.counter(USERS_REMOVED)
            s.spawn(self.watch_users())

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
        if self.ip_failures.blocked_for(ctx.peer_ip):
            raise ValidationError(
                "too many failed logins from this address; wait a minute", code=p.E_RATE_LIMITED
            )
        wait = self.login_failures.blocked_for(login)
        if wait:
            raise ValidationError(
                f"too many failed logins for {login!r}; this login is locked for"
                f" {math.ceil(wait / 60)} more minute(s)",
                code=p.E_RATE_LIMITED,
            )
        ctx.authenticating = True
        try:
            stored = await self.server.store.get_hash(login)
            ok = await self.hasher.verify_async(stored, msg.password)
        finally:
            ctx.authenticating = False
        if not ok or ctx.closed:
            ctx.auth_failures += 1
            self.ip_failures.add(ctx.peer_ip)
            self.login_failures.add(login)
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
        self.login_failures.clear(login)
        ctx.login = login
        ctx.host = host
        ctx.direct = msg.direct
        await self.server.registry.attach(
            ctx, host=host or ctx.peer_ip, observed_ip=ctx.peer_ip, direct=msg.direct
        )
        if await self.server.store.get_hash(login) is None:  # removed while we checked
            ctx.fail(p.E_AUTH_FAILED, f"the login {login!r} was removed from this server")
            return None
        cfg = self.server.config
        alarms = self.server.extensions.get("alarms")  # chatwire's AlarmService (S117)
        ctx.send(
            p.AuthOk(
                id=msg.id,
                login=login,
                observed_ip=ctx.peer_ip,
                heartbeat=cfg.heartbeat_interval,
                timeout=cfg.heartbeat_timeout,
                alarms=await alarms.count(login) if alarms is not None else 0,
            )
        )
        log.info("conn %d: %s logged in from %s", ctx.id, login, ctx.peer_ip)
        for hook in self.server.auth_hooks:
            try:
                await hook(ctx)
            except Exception:
                log.exception("auth hook failed")
        return None

    async def watch_users(self) -> None:
        """Close the live links of users removed meanwhile (``chmail-server user remove``
        in another process bumps a counter in the database; one small query a tick)."""
        store = self.server.store
        while True:
            await asyncio.sleep(USER_CHECK_INTERVAL)
            try:
                removed = await store.counter(USERS_REMOVED)
                if removed == self._users_removed:
                    continue
                self._users_removed = removed
                await self.close_removed(await store.logins())
            except Exception:
                log.exception("checking for removed users failed")

    async def close_removed(self, existing: set[str]) -> None:
        for login in list(self.server.registry.logins()):
            if login in existing:
                continue
            log.info("user %s was removed; closing their links", login)
            for ctx in self.server.connections(login):
                ctx.fail(p.E_AUTH_FAILED, f"the login {login!r} was removed from this server")

    async def alloc(self, ctx: Context, msg: p.Alloc) -> p.Message | None:
        reply = self.alloc_now(ctx, msg)
        self.writer.schedule()  # not in a read: no read hook will commit it
        return reply

    def alloc_now(self, ctx: Context, msg: p.Alloc) -> p.Message | None:
        """Inline in the dispatcher (no task): decide, sign, queue for the commit."""
        login = ctx.require_login()
        try:
            message_id = headers.check_message_id(msg.message_id)
            context = headers.check_context(msg.context)
            thread = (
                [headers.check_message_id(t) for t in msg.thread[:MAX_THREAD]] if msg.thread else []
            )
        except HeaderError as exc:
            raise ValidationError(exc.message, code=p.E_INVALID) from None
        recipients = check_recipients(msg.recipients)
        pool = self.server.pool
        if pool.next_lease > pool.reserved:  # needs_reservation(); committed with this lease
            pool.reserved = pool.next_lease + LEASE_BLOCK - 1
        if ctx.direct and ctx.host:
            host = ctx.host
        else:
            host = self.server.public_host
            if host != self._public_host:
                self._check_public_host(host)
        grant = pool.alloc(
            login=login,
            host=host,
            message_id=message_id,
            recipients=recipients,
            thread=thread,
            context=context,
            now=int(time.time()),
        )
        lease = grant.lease
        # Every value of the link is checked already: the login at auth (valid_login),
        # the host at auth (check_host) or by _check_public_host, the Message-ID and
        # context above; the pool's ports are 1-65535 and its lease numbers start at 1.
        sig = headers.signature(
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
        reply = p.allocated_frame(
            id=msg.id,
            login=login,
            port=lease.port,
            host=lease.host,
            lease=lease.lease,
            expires=grant.expires,
            sig=sig,
            context=context,
        )
        self.writer.submit(lease, ctx, msg.id, reply)  # answered once committed
        return None

    def _check_public_host(self, host: str) -> None:
        """Check the server's public host (it goes into links) once per value."""
        try:
            headers.check_host(host)
        except HeaderError as exc:
            log.error("the server's public host: %s", exc.message)
            raise ValidationError(
                "the server's public host name is not valid; tell its operator",
                code=p.E_INTERNAL,
            ) from None
        self._public_host = host

    async def presence(self, ctx: Context, msg: p.Presence) -> p.Message | None:
        """Online state of related logins; everyone else reads as offline (access.py)."""
        me = ctx.require_login()
        if len(msg.logins) > MAX_PRESENCE:
            raise ValidationError(f"ask for at most {MAX_PRESENCE} logins", code=p.E_LIMIT)
        online: dict[str, bool] = {}
        for login in msg.logins:
            try:
                online[valid_login(login)] = self.server.is_online(login)
            except ValidationError as exc:
                raise ValidationError(exc.message, code=p.E_INVALID) from None
        asking = [x for x, on in online.items() if on and x != me]
        if asking:  # only an online login can need hiding
            store, pool, now = self.server.store, self.server.pool, int(time.time())
            mine = await store.emails_of(me)
            my_leases = pool.leases_of(me)
            for other in asking:
                theirs = pool.leases_of(other)
                emails = await store.emails_of(other) if my_leases else []
                online[other] = related(me, mine, other, emails, my_leases, theirs, now)
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
