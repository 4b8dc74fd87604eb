"""The CH server's asyncio shell over the sans-I/O ``chmail.protocol.Connection``.

Rules (docs/protocol.md is normative):

* On connect the server sends ``hello``; the client's first frame must be ``hello`` of
  the same version, else ``error`` (code ``version`` naming both) and close.
* A broken stream (oversized length, garbage, bad first frame) gets one ``error`` frame
  and a close; a well-formed frame that breaks a message rule, or names a type the
  server does not handle, gets an ``error`` reply and the connection carries on.
* Requests are dispatched by type through ``ChServer.handlers`` (type -> async
  handler); each runs in its own task so a slow one (argon2) blocks nobody, at most
  ``MAX_INFLIGHT`` per connection. ``sync_handlers`` run inline; ``read_hooks`` run
  after the frames of each read are dispatched.
* Writes never wait: a client whose unread output passes ``max_write_buffer`` is
  dropped, so a client that stops reading cannot hold up anyone else.
* Heartbeats: a connection silent (no complete frame) for ``heartbeat_timeout`` is
  dropped; the server pings an authenticated client it has not written to for
  ``heartbeat_interval``.
* After auth every request acts as ``Context.login``; nothing a client claims later
  changes who it is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chmail import protocol as p
from chmail.chserver.context import Context
from chmail.chserver.ports import PortPool
from chmail.chserver.registry import Registry
from chmail.chserver.store import ServerStore
from chmail.config import ServerConfig
from chmail.errors import ChmailError, RemoteProtocolError

log = logging.getLogger(__name__)

__all__ = ["ChServer", "Context", "Defer", "Handler", "Hook", "SyncHandler"]

MAX_INFLIGHT = 64  # concurrent requests per connection; more get "rate_limited"
READ_SIZE = 256 * 1024  # bytes read from a socket at a time (asyncio's own figure)
AGENT = "chmail-server/1"

Handler = Callable[["Context", Any], Awaitable[p.Message | None]]
SyncHandler = Callable[["Context", Any], p.Message | None]


class Defer(Exception):
    """Raised by a sync handler that must wait after all: the async handler runs instead."""


Hook = Callable[["Context"], Awaitable[None]]
LifeHook = Callable[[], Awaitable[None]]


class _Link(asyncio.BufferedProtocol):
    """asyncio glue: bytes from the socket into the Context's Connection and back.

    Reads land in one buffer shared by every connection of the server (``get_buffer``;
    the loop reads one socket at a time and ``buffer_updated`` copies the bytes out at
    once), instead of a fresh 256 KiB bytes object per read: glibc maps and unmaps
    each of those (mmap, mremap, munmap and a TLB shootdown per request).
    """

    def __init__(self, server: ChServer) -> None:
        self.server = server
        self.ctx: Context | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server._read_buffer[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.ctx = self.server._connected(transport)

    def data_received(self, data: bytes) -> None:
        ctx = self.ctx
        if ctx is None or ctx.closed:
            return
        try:
            ctx.conn.receive_data(data)
        except RemoteProtocolError as exc:
            log.debug("conn %d: %s", ctx.id, exc)
            ctx.fail(exc.code, exc.message)
            return
        server = self.server
        events = ctx.conn.take_events()
        try:
            if events:
                ctx.last_rx = ctx.loop.time()
            for msg in events:
                server._dispatch(ctx, msg)
        finally:  # whatever happened, what the frames queued is not left waiting
            for hook in server.read_hooks:
                hook()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ctx is not None:
            self.server._disconnected(self.ctx)


class ChServer:
    """The CH server: connections, the dispatch table, hooks, presence and push."""

    def __init__(
        self,
        config: ServerConfig,
        store: ServerStore,
        key: bytes,
        pool: PortPool,
        *,
        public_host: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.key = key
        self.pool = pool
        self.public_host = public_host or config.public_host
        self.registry = Registry(store)
        self.handlers: dict[str, Handler] = {}
        self.sync_handlers: dict[str, SyncHandler] = {}
        self.auth_hooks: list[Hook] = []
        self.disconnect_hooks: list[Hook] = []
        self.start_hooks: list[LifeHook] = []
        self.stop_hooks: list[LifeHook] = []
        self.read_hooks: list[Callable[[], None]] = []
        self.address: tuple[str, int] | None = None
        self.extensions: dict[str, Any] = {}  # name -> object, for extensions to share
        self._contexts: dict[int, Context] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._closers: list[LifeHook] = []
        self._read_buffer = memoryview(bytearray(READ_SIZE))  # see _Link

    # ------------------------------------------------------------------ the seam

    def register(self, t: str, handler: Handler) -> None:
        """Handle requests of wire type ``t``; the handler's return value is the reply."""
        if t in self.handlers:
            raise RuntimeError(f"a handler for {t!r} is already registered")
        if t not in p.REGISTRY:
            raise RuntimeError(f"{t!r} is not a message type of chmail.protocol")
        self.handlers[t] = handler

    def register_sync(self, t: str, handler: SyncHandler) -> None:
        """A fast path for requests of type ``t`` that need no waiting: run inline (no
        task), reply returned or ChmailError raised as for async handlers; raise
        ``Defer`` to fall back to the async handler registered for the same type."""
        if t in self.sync_handlers:
            raise RuntimeError(f"a sync handler for {t!r} is already registered")
        self.sync_handlers[t] = handler

    def on_auth(self, hook: Hook) -> None:
        """``await hook(ctx)`` after each successful auth (auth_ok already sent)."""
        self.auth_hooks.append(hook)

    def on_disconnect(self, hook: Hook) -> None:
        """``await hook(ctx)`` after a connection is gone (ctx.login may be None)."""
        self.disconnect_hooks.append(hook)

    def on_read_done(self, hook: Callable[[], None]) -> None:
        """``hook()`` after the frames of one read from a connection are dispatched
        (e.g. to commit what they queued and answer at once, without a loop turn)."""
        self.read_hooks.append(hook)

    def on_start(self, hook: LifeHook) -> None:
        self.start_hooks.append(hook)

    def on_stop(self, hook: LifeHook) -> None:
        """Run at stop, after clients are gone and before the store closes."""
        self.stop_hooks.append(hook)

    def is_online(self, login: str) -> bool:
        return self.registry.is_online(login)

    def connections(self, login: str) -> list[Context]:
        return self.registry.connections(login)

    def push(self, login: str, msg: p.Message) -> int:
        """Send ``msg`` to every live authenticated connection of ``login``; how many."""
        return sum(1 for ctx in self.registry.connections(login) if ctx.send(msg))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; it is awaited (cancelled) at stop."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg_done)
        return task

    def _bg_done(self, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ life

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        await self.store.reset_online(int(time.time()))
        for hook in self.start_hooks:
            await hook()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Link(self), host, port, ssl=ssl_context, backlog=4096
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        log.info("listening on %s:%d", *self.address)
        return self.address

    def add_closer(self, closer: LifeHook) -> None:
        """Awaited last at stop (after stop hooks), e.g. the lease writer's flush."""
        self._closers.append(closer)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for ctx in list(self._contexts.values()):
            ctx.close("the server is shutting down")
        if self._server is not None:
            try:
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            except TimeoutError:
                for ctx in list(self._contexts.values()):
                    ctx.abort()
        if self._bg:  # let disconnect bookkeeping finish; cut long handlers short
            await asyncio.wait(list(self._bg), timeout=2)
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        await self.store.reset_online(int(time.time()))
        for hook in self.stop_hooks:
            await hook()
        for closer in self._closers:
            await closer()

    @property
    def connection_count(self) -> int:
        return len(self._contexts)

    # ------------------------------------------------------------------ connections

    def _connected(self, transport: asyncio.Transport) -> Context:
        ctx = Context(self, transport, next(self._ids))
        self._contexts[ctx.id] = ctx
        ctx.send(p.Hello(agent=AGENT))
        return ctx

    def _disconnected(self, ctx: Context) -> None:
        ctx.closed = True
        ctx.conn.close()
        self._contexts.pop(ctx.id, None)
        if ctx.login is not None or self.disconnect_hooks:
            self.spawn(self._after_disconnect(ctx))

    async def _after_disconnect(self, ctx: Context) -> None:
        await self.registry.detach(ctx)
        for hook in self.disconnect_hooks:
            try:
                await hook(ctx)
            except Exception:
                log.exception("disconnect hook failed")

    def _dispatch(self, ctx: Context, msg: p.Message) -> None:
        # sync handlers first: the hot requests (alloc) skip the checks below. Unknown and
        # Rejected have no ``t`` of their own ("": no handler), so they never get here.
        fast = self.sync_handlers.get(msg.t)
        if fast is not None:
            try:
                reply = fast(ctx, msg)
            except Defer:
                pass
            except ChmailError as exc:
                ctx.send(p.Error(code=exc.code, message=exc.message, id=getattr(msg, "id", None)))
                return
            except Exception:
                log.exception("conn %d: %s handler failed", ctx.id, msg.t)
                ctx.send(
                    p.Error(
                        code=p.E_INTERNAL, message="the server failed", id=getattr(msg, "id", None)
                    )
                )
                return
            else:
                if reply is not None:
                    ctx.send(reply)
                return
        if isinstance(msg, p.Ping):
            ctx.send(p.Pong(n=msg.n))
            return
        if isinstance(msg, p.Pong | p.Hello | p.Error):
            if isinstance(msg, p.Error):
                log.debug("conn %d: client error %s: %s", ctx.id, msg.code, msg.message)
            return
        if isinstance(msg, p.Bye):
            ctx.close_soon()
            return
        req_id = getattr(msg, "id", None)
        if isinstance(msg, p.Rejected):
            ctx.send(p.Error(code=msg.code, message=msg.reason, id=msg.id))
            return
        handler = None if isinstance(msg, p.Unknown) else self.handlers.get(msg.t)
        if handler is None:
            name = msg.type_name if isinstance(msg, p.Unknown) else msg.t
            ctx.send(
                p.Error(
                    code=p.E_UNKNOWN_TYPE,
                    message=f"this server does not handle {name[:64]!r} messages",
                    id=req_id,
                )
            )
            return
        if ctx._inflight >= MAX_INFLIGHT:
            ctx.send(
                p.Error(
                    code=p.E_RATE_LIMITED,
                    message=f"more than {MAX_INFLIGHT} requests at once; wait for replies",
                    id=req_id,
                )
            )
            return
        ctx._inflight += 1
        self.spawn(self._run(ctx, handler, msg, req_id))

    async def _run(self, ctx: Context, handler: Handler, msg: p.Message, req_id: Any) -> None:
        try:
            reply = await handler(ctx, msg)
            if reply is not None:
                ctx.send(reply)
        except ChmailError as exc:
            ctx.send(p.Error(code=exc.code, message=exc.message, id=req_id))
        except Exception:
            log.exception("conn %d: %s handler failed", ctx.id, msg.t)
            ctx.send(
                p.Error(code=p.E_INTERNAL, message="the server failed on this request", id=req_id)
            )
        finally:
            ctx._inflight -= 1

    async def _sweep(self) -> None:
        interval = self.config.heartbeat_interval
        timeout = self.config.heartbeat_timeout
        tick = max(0.02, min(interval, timeout) / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for ctx in list(self._contexts.values()):
                if now - ctx.last_rx > timeout:
                    log.info("conn %d (%s): silent for %.1fs; dropped", ctx.id, ctx.login, timeout)
                    ctx.fail(p.E_TIMEOUT, f"nothing received for {timeout:g} seconds")
                elif ctx.login is not None and now - ctx.last_tx >= interval:
                    ctx.send(p.Ping(n=0))
