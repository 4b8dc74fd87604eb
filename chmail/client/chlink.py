"""The client side of the live link to the CH server (S101, S103, S113).

Rules:

* ``start()`` connects (TLS optional), exchanges ``hello``, authenticates, and raises
  AuthError or ConnectionLost (user sentences) when that first attempt fails.
* Afterwards the link keeps itself alive in the background: it pings every
  ``heartbeat`` seconds (the server's figure from ``auth_ok`` unless overridden) and
  treats ``timeout`` seconds without any frame as a dead link. After a drop it
  reconnects with exponential backoff (0.5 s doubling to 30 s, with jitter) and logs in
  again, which records the new address in table 1 (S101 again).
* ``request(msg)`` numbers the request, waits for the reply with the same id, and
  raises ServerError(code, message) for an ``error`` reply and ConnectionLost when the
  link drops meanwhile. It waits (up to its timeout) for a link being re-established.
* Server pushes (frames the link did not ask for: rings, alarms, chat...) go to every
  callback given to ``on_push`` and to every queue from ``subscribe()``.
* ``state`` is a LinkState; ``on_state(callback)`` is told of every change, and
  ``connected`` is an asyncio.Event set exactly while the link is up.
* The password is kept only in memory, never logged, never in repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import random
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from chmail import headers
from chmail import protocol as p
from chmail.config import AccountConfig, parse_hostport
from chmail.errors import AuthError, ChmailError, ConnectionLost, ProtocolError, ServerError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 15.0
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0


class LinkState(enum.Enum):
    IDLE = "idle"  # not started
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # dropped; reconnecting in the background
    CLOSED = "closed"  # close() was called


PushCallback = Callable[[p.Message], Any]
StateCallback = Callable[["LinkState"], Any]


class ChLink:
    def __init__(
        self,
        host: str,
        port: int,
        login: str,
        password: str,
        *,
        tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        advertised_host: str = "",
        direct: bool = False,
        heartbeat: float | None = None,
        timeout: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        local_addr: tuple[str, int] | None = None,
        agent: str = "chmail",
    ) -> None:
        self.host, self.port, self.login = host, port, login
        self._password = password
        self.tls = tls or ssl_context is not None
        self._ssl = ssl_context
        self.advertised_host = advertised_host
        self.direct = direct
        self.heartbeat_override, self.timeout_override = heartbeat, timeout
        self.connect_timeout = connect_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.local_addr = local_addr
        self.agent = agent
        self.state = LinkState.IDLE
        self.connected = asyncio.Event()
        self.observed_ip = ""
        self.last_error: ChmailError | None = None
        self.reconnects = 0
        self._push_cbs: list[PushCallback] = []
        self._queues: list[asyncio.Queue[p.Message]] = []
        self._state_cbs: list[StateCallback] = []
        self._pending: dict[int, asyncio.Future[p.Message]] = {}
        self._ids = 0
        self._writer: asyncio.StreamWriter | None = None
        self._conn: p.Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._heartbeat = 15.0
        self._timeout = 45.0

    def __repr__(self) -> str:
        return f"ChLink({self.login}@{self.address}, {self.state.value})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ building

    @classmethod
    async def from_account(
        cls, account: AccountConfig, *, password: str | None = None, **kw: Any
    ) -> ChLink:
        """A link built from ``[accounts.ch]``; ``password`` overrides the configured source."""
        from chmail.client import passwords  # the client's password sources

        ch = account.ch
        if not ch.server or not ch.login:
            raise ChmailError(
                f"Account {account.name!r} has no CH server: set [accounts.ch] server and login.",
                code="config",
            )
        host, port = parse_hostport(ch.server, default_port=7380)
        if password is None:
            password = await passwords.get(
                account=account.name,
                what="ch",
                command=ch.password_command,
                use_keyring=ch.keyring,
            )
        kw.setdefault("advertised_host", ch.direct_host)
        return cls(host, port, ch.login, password, tls=ch.tls, direct=ch.direct, **kw)

    # ------------------------------------------------------------------ subscribers

    def on_push(self, callback: PushCallback) -> Callable[[], None]:
        """Call ``callback(msg)`` (sync, or returning an awaitable) for every push."""
        self._push_cbs.append(callback)
        return lambda: self._push_cbs.remove(callback) if callback in self._push_cbs else None

    def subscribe(self, maxsize: int = 0) -> asyncio.Queue[p.Message]:
        """A queue that receives every push from now on (``unsubscribe`` to stop)."""
        q: asyncio.Queue[p.Message] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[p.Message]) -> None:
        if q in self._queues:
            self._queues.remove(q)

    def on_state(self, callback: StateCallback) -> Callable[[], None]:
        self._state_cbs.append(callback)
        return lambda: self._state_cbs.remove(callback) if callback in self._state_cbs else None

    def _set_state(self, state: LinkState) -> None:
        if state is self.state:
            return
        self.state = state
        if state is LinkState.CONNECTED:
            self.connected.set()
        else:
            self.connected.clear()
        for cb in list(self._state_cbs):
            try:
                cb(state)
            except Exception:
                log.exception("link state callback failed")

    # ------------------------------------------------------------------ life

    async def start(self, *, wait: bool = True) -> None:
        """Connect and log in, then stay connected in the background.

        With ``wait`` (the default) the first attempt's failure raises AuthError or
        ConnectionLost and the link stays idle (``start`` may be called again). With
        ``wait=False`` it returns at once and keeps trying in the background, as after a
        drop; watch ``state`` / ``last_error``.
        """
        if self.state is not LinkState.IDLE:
            raise ChmailError("This CH link was already started.")
        self._set_state(LinkState.CONNECTING)
        reader: asyncio.StreamReader | None = None
        if wait:
            try:
                reader = await self._connect()
            except BaseException:
                self._set_state(LinkState.IDLE)
                raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(reader))

    # A timeout argument (not asyncio.timeout around the call) because the wait is part
    # of the request's own deadline and callers rarely want to write the block.
    async def wait_connected(self, timeout: float = REQUEST_TIMEOUT) -> None:  # noqa: ASYNC109
        if self.state is LinkState.CLOSED:
            raise ConnectionLost("The CH link is closed.")
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            why = f" ({self.last_error})" if self.last_error else ""
            raise ConnectionLost(
                f"Not connected to the CH server {self.address}{why}; still retrying."
            ) from None

    async def close(self) -> None:
        if self.state is LinkState.CLOSED and self._supervisor is None:
            return
        self._set_state(LinkState.CLOSED)
        if self._writer is not None and self._conn is not None:
            with contextlib.suppress(ChmailError, OSError, RuntimeError):
                self._writer.write(self._conn.send(p.Bye(reason="client closing")))
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._drop(ConnectionLost("The CH link was closed."))

    async def __aenter__(self) -> ChLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    async def request(
        self,
        msg: p.Message,
        *,
        timeout: float = REQUEST_TIMEOUT,  # noqa: ASYNC109
    ) -> p.Message:
        """Send a request (its ``id`` is set here); its reply, or ServerError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.wait_connected(timeout)
        writer, conn = self._writer, self._conn
        if writer is None or conn is None:
            raise ConnectionLost(f"The link to the CH server {self.address} just dropped.")
        self._ids += 1
        req_id = self._ids
        msg = dataclasses.replace(msg, id=req_id)  # type: ignore[call-arg]
        fut: asyncio.Future[p.Message] = loop.create_future()
        self._pending[req_id] = fut
        try:
            writer.write(conn.send(msg))
            async with asyncio.timeout_at(deadline):
                await writer.drain()
                reply = await fut
        except TimeoutError:
            raise ConnectionLost(
                f"The CH server {self.address} did not answer within {timeout:g} s."
            ) from None
        except (OSError, ConnectionError) as exc:
            raise ConnectionLost(f"The link to the CH server {self.address} dropped.") from exc
        finally:
            self._pending.pop(req_id, None)
        if isinstance(reply, p.Error):
            raise ServerError(reply.message or reply.code, code=reply.code)
        return reply

    async def alloc_port(
        self,
        message_id: str,
        recipients: list[str],
        thread: Iterable[str] = (),
        context: str = "",
    ) -> headers.ChatLink:
        """S103: lease a chat port for an outgoing mail; the signed link to stamp."""
        reply = await self.request(
            p.Alloc(
                message_id=message_id,
                recipients=list(recipients),
                thread=list(thread),
                context=context,
            )
        )
        if not isinstance(reply, p.Allocated):
            raise ServerError(f"The CH server answered alloc with {reply.t!r}.", code="protocol")
        version, expires, lease, mac = headers.parse_sig(reply.sig)
        link = headers.ChatLink(
            login=reply.login,
            port=reply.port,
            host=reply.host,
            lease=lease,
            expires=expires,
            mac=mac,
            context=reply.context,
            version=version,
        )
        link.headers()  # every value re-checked before anyone stamps it
        return link

    async def presence(self, logins: Iterable[str]) -> dict[str, bool]:
        reply = await self.request(p.Presence(logins=list(logins)))
        if not isinstance(reply, p.PresenceOk):
            raise ServerError(f"The CH server answered presence with {reply.t!r}.", code="protocol")
        return dict(reply.online)

    # ------------------------------------------------------------------ the connection

    async def _connect(self) -> asyncio.StreamReader:
        """Connect, hello, auth. Leaves ``_writer``/``_conn`` set; returns the reader."""
        ctx = (
            self._ssl
            if self._ssl is not None
            else (ssl.create_default_context() if self.tls else None)
        )
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=ctx,
                    server_hostname=self.host if ctx else None,
                    local_addr=self.local_addr,
                    limit=p.DEFAULT_MAX_FRAME * 2,
                )
        except TimeoutError:
            raise ConnectionLost(
                f"The CH server {self.address} did not answer within {self.connect_timeout:g} s."
            ) from None
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS with the CH server {self.address} failed: {exc}.") from exc
        except OSError as exc:
            raise ConnectionLost(
                f"Cannot reach the CH server {self.address}: {exc.strerror or exc}."
            ) from exc
        conn = p.Connection(p.Role.CLIENT)
        try:
            async with asyncio.timeout(self.connect_timeout):
                writer.write(conn.send(p.Hello(agent=self.agent)))
                await self._expect(reader, conn, p.Hello)
                writer.write(
                    conn.send(
                        p.Auth(
                            id=0,
                            login=self.login,
                            password=self._password,
                            host=self.advertised_host,
                            direct=self.direct,
                        )
                    )
                )
                ok = await self._expect(reader, conn, p.AuthOk)
        except TimeoutError:
            writer.close()
            raise ConnectionLost(
                f"The CH server {self.address} did not complete the login in time."
            ) from None
        except OSError as exc:
            writer.close()
            raise ConnectionLost(
                f"The connection to the CH server {self.address} failed during login: {exc}."
            ) from exc
        except BaseException:
            writer.close()
            raise
        assert isinstance(ok, p.AuthOk)
        self.observed_ip = ok.observed_ip
        self._heartbeat = self.heartbeat_override or ok.heartbeat
        self._timeout = self.timeout_override or ok.timeout
        self._writer, self._conn = writer, conn
        self.last_error = None
        self._set_state(LinkState.CONNECTED)
        log.info("connected to %s as %s", self.address, self.login)
        return reader

    async def _expect(
        self, reader: asyncio.StreamReader, conn: p.Connection, kind: type[p.Message]
    ) -> p.Message:
        while True:
            msg = conn.next_event()
            if msg is None:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionLost(
                        f"The CH server {self.address} closed the connection during login."
                    )
                try:
                    conn.receive_data(data)
                except ProtocolError as exc:
                    raise ConnectionLost(
                        f"The CH server {self.address} broke the protocol: {exc}."
                    ) from None
                continue
            if isinstance(msg, kind):
                return msg
            if isinstance(msg, p.Error):
                if msg.code == p.E_AUTH_FAILED:
                    raise AuthError(
                        f"The CH server {self.address} refused the login {self.login!r}: "
                        "wrong login or password."
                    )
                if msg.code in (p.E_INVALID, p.E_RATE_LIMITED) and kind is p.AuthOk:
                    raise AuthError(
                        f"The CH server {self.address} refused the login: {msg.message}."
                    )
                raise ConnectionLost(f"The CH server {self.address} refused us: {msg.message}.")
            if isinstance(msg, p.Ping):
                continue
            # anything else before auth_ok is a push we cannot have asked for yet: ignore

    async def _supervise(self, reader: asyncio.StreamReader | None) -> None:
        delay = self.backoff_initial
        first = reader is None  # start(wait=False): no wait before the first attempt
        had_link = not first
        while True:
            if reader is not None:
                try:
                    await self._serve(reader)
                except (ChmailError, OSError, ConnectionError) as exc:
                    lost = ConnectionLost(str(exc))
                    self.last_error = exc if isinstance(exc, ChmailError) else lost
                except Exception as exc:  # a bug must not leave a dead link looking alive
                    log.exception("CH link reader failed")
                    self.last_error = ConnectionLost(f"The CH link failed: {exc!r}.")
                why = ConnectionLost(f"The link to the CH server {self.address} dropped.")
                await self._drop(why)
                self._set_state(LinkState.DISCONNECTED)
                log.info("link to %s dropped (%s); reconnecting", self.address, self.last_error)
            while True:
                if not first:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.backoff_max)
                first = False
                self._set_state(LinkState.CONNECTING)
                try:
                    reader = await self._connect()
                except ChmailError as exc:
                    self.last_error = exc
                    self._set_state(LinkState.DISCONNECTED)
                    continue
                if had_link:
                    self.reconnects += 1
                had_link = True
                delay = self.backoff_initial
                break

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        """Read frames until the link drops; ping meanwhile."""
        conn, writer = self._conn, self._writer
        assert conn is not None
        assert writer is not None
        pinger = asyncio.get_running_loop().create_task(self._ping(writer, conn))
        try:
            while True:
                msg = conn.next_event()
                if msg is None:
                    try:
                        async with asyncio.timeout(self._timeout):
                            data = await reader.read(65536)
                    except TimeoutError:
                        raise ConnectionLost(
                            f"The CH server {self.address} was silent for {self._timeout:g} s."
                        ) from None
                    if not data:
                        raise ConnectionLost(f"The CH server {self.address} closed the link.")
                    conn.receive_data(data)
                    continue
                self._handle(msg, writer, conn)
        finally:
            pinger.cancel()

    async def _ping(self, writer: asyncio.StreamWriter, conn: p.Connection) -> None:
        n = 0
        while True:
            await asyncio.sleep(self._heartbeat)
            n += 1
            try:
                writer.write(conn.send(p.Ping(n=n)))
            except (ChmailError, RuntimeError):
                return

    def _handle(self, msg: p.Message, writer: asyncio.StreamWriter, conn: p.Connection) -> None:
        if isinstance(msg, p.Ping):
            writer.write(conn.send(p.Pong(n=msg.n)))
            return
        if isinstance(msg, p.Pong | p.Hello):
            return
        if isinstance(msg, p.Bye):
            raise ConnectionLost(f"The CH server {self.address} closed the link: {msg.reason}.")
        req_id = getattr(msg, "id", None)
        fut = self._pending.get(req_id) if isinstance(req_id, int) else None
        if fut is not None:
            if not fut.done():
                fut.set_result(msg)
            return
        if isinstance(msg, p.Error):
            self.last_error = ServerError(msg.message or msg.code, code=msg.code)
            log.info("CH server error: %s %s", msg.code, msg.message)
            return
        self._deliver(msg)

    def _deliver(self, msg: p.Message) -> None:
        for cb in list(self._push_cbs):
            try:
                result = cb(msg)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(_log_failure)
            except Exception:
                log.exception("push callback failed")
        for q in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(msg)

    async def _drop(self, why: ChmailError) -> None:
        writer, self._writer, self._conn = self._writer, None, None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(why)
        self._pending.clear()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("push callback failed", exc_info=task.exception())
