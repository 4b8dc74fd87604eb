"""aioimaplib's protocol class, with its response reader made iterative and incremental.

Stock aioimaplib 2.0.3 (see shared/mail-stack.md):

1. ``_handle_responses`` recurses once per line, so a chunk of ~1,000 lines raises
   RecursionError inside ``data_received``; asyncio only logs it and the command hangs.
2. ``FetchCommand.wait_data`` rescans every line so far on each new line (quadratic).
3. Every line cancels and re-arms a timer (``call_later``): costly on big FETCHes.
4. A server-announced literal size is trusted: ``{999999999999}`` would be buffered.

Here ``data_received`` is a loop over a buffer with a read position; FETCH tracks its
parenthesis depth as lines arrive; per-line timers are off (the caller watches for
inactivity with ``last_rx``); literals larger than ``max_literal`` drop the connection
with a clear error. Everything else (commands, states, IDLE) is aioimaplib's own.

A ``StreamFetchCommand`` hands each message of the usual shape to a callback as soon as
its bytes are in (one regex per message, no line list), so parsing overlaps the server
still sending (or, for a caller that parses in another process, whole runs of them as
they came, ``take_span``); when the callback asks, reading pauses (the kernel buffers what the
server sends meanwhile) until ``resume_reading()``: the caller stores a batch without
the reader competing with it for the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from aioimaplib import aioimaplib as _aio

from chmail.client.backends.imap_headers import SPAN_ITEM
from chmail.client.gcpause import collector_paused

log = logging.getLogger(__name__)

CRLF = b"\r\n"
MAX_LITERAL = 64 * 1024 * 1024  # bytes; a larger mail is refused rather than buffered
MAX_LINE = 1024 * 1024  # a response line without CRLF after this much is garbage
_LITERAL_END = re.compile(rb"\{(\d+)\+?\}$")
_FETCH_START = re.compile(rb"[0-9]+ FETCH \(")
# One message of a header sync in the order Dovecot (and most servers) answer the items
# asked for; anything else takes the generic path and is parsed from the lines at the end.
# (The regex stops before the field list: the rest of the line is found with bytes.find,
# which does not step through it byte by byte.)
_STREAM_ITEM = re.compile(
    rb"\* [0-9]+ FETCH \(UID ([0-9]+) FLAGS \(([^)]*)\) RFC822\.SIZE ([0-9]+) "
    rb"BODY\[HEADER\.FIELDS \("
)
# take(uid, flags, size, header literal) -> True to pause reading
Take = Callable[[int, bytes, int, bytes], bool]
# take_span(run of usual-shape items as sent, how many) -> True to pause reading
TakeSpan = Callable[[bytes, int], bool]


class LiteralTooLarge(Exception):
    pass


class FastFetchCommand(_aio.FetchCommand):  # type: ignore[misc]
    """FETCH whose "is the response complete?" check is O(1) per line."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._depth = 0
        super().__init__(*args, **kw)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        if type(line) is bytes:  # literals arrive as bytearray and do not count
            if _FETCH_START.match(line):
                self._depth = 0
            self._depth += line.count(b"(") - line.count(b")")
        self._resp_result = result
        self._resp_lines.append(line)

    def wait_data(self) -> bool:
        return self._depth != 0

    def _reset_timer(self) -> None:
        if self._timeout is not None:
            super()._reset_timer()


class StreamFetchCommand(FastFetchCommand):
    """A FETCH whose usual-shape messages go to ``take`` as they arrive (see the module
    docstring); the rest, and the tagged reply, collect as lines as usual."""

    def __init__(
        self,
        *args: Any,
        take: Take | None = None,
        take_span: TakeSpan | None = None,
        span_limit: int = 1 << 30,
        **kw: Any,
    ) -> None:
        self.take = take
        self.take_span = take_span
        self.span_limit = span_limit  # items per take_span call, at most
        super().__init__(*args, **kw)


_FAST_FETCH = (FastFetchCommand, StreamFetchCommand)


class FastProtocol(_aio.IMAP4ClientProtocol):  # type: ignore[misc]
    """IMAP4ClientProtocol with an iterative reader; see the module docstring."""

    def __init__(self, *args: Any, max_literal: int = MAX_LITERAL, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._buf = bytearray()
        self._cur: Any = None
        self.max_literal = max_literal
        self.last_rx = 0.0
        self.error: Exception | None = None
        self._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every waiting command at once (stock aioimaplib leaves them hanging until
        their timeout): a dropped server is noticed now, not 30 s later."""
        reason = _aio.Abort(f"connection lost: {exc or self.error or 'closed by the server'}")
        waiting = [*self.pending_async_commands.values(), self.pending_sync_command]
        for cmd in waiting:
            if cmd is not None and not cmd._event.is_set():
                cmd._exception = reason
                cmd._timer.cancel()
                cmd._event.set()
        super().connection_lost(exc)

    def data_received(self, d: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        self._buf += d
        if not self._paused:
            self._feed()

    def resume_reading(self) -> None:
        """Go on after a ``take`` asked to pause: first what is already buffered."""
        if not self._paused:
            return
        self._paused = False
        self.last_rx = asyncio.get_running_loop().time()
        self._feed()
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _feed(self) -> None:
        # A streamed FETCH makes tens of thousands of small acyclic objects; the cyclic
        # collector's passes over them are pure overhead, so it waits meanwhile.
        streaming = type(self.pending_async_commands.get("FETCH")) is StreamFetchCommand
        try:
            with collector_paused() if streaming else contextlib.nullcontext():
                self._consume()
        except LiteralTooLarge as exc:
            self.error = exc
            log.warning("%s", exc)
            if self.transport is not None:
                self.transport.close()
        if self.pending_sync_command is not None:
            self.pending_sync_command.flush()

    def _too_large(self, size: int) -> LiteralTooLarge:
        return LiteralTooLarge(
            f"The IMAP server announced a {size:,}-byte item, more than the "
            f"{self.max_literal:,}-byte limit; the connection was closed."
        )

    def _pause(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def _consume(self) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        while pos < end and not self._paused:
            cmd = self._cur
            stream = self.pending_async_commands.get("FETCH")
            if cmd is None and type(stream) is StreamFetchCommand:
                if stream.take_span is not None:
                    pos, wait = self._stream_spans(stream, stream.take_span, buf, pos, end)
                else:
                    pos, wait = self._stream_items(stream, buf, pos, end)
                if wait or pos >= end or self._paused:
                    break
            if cmd is not None and cmd.wait_literal_data():
                need = cmd._expected_size - len(cmd._resp_literal_data)
                chunk = bytes(buf[pos : pos + need])
                pos += len(chunk)
                cmd.append_literal_data(chunk)
                if cmd.wait_literal_data():
                    break
                continue
            idx = buf.find(CRLF, pos)
            if idx < 0:
                if end - pos > MAX_LINE:
                    raise LiteralTooLarge("The IMAP server sent a line longer than 1 MiB.")
                break
            line = bytes(buf[pos:idx])
            fast = self._fast_fetch(line, cmd, buf, idx + 2, end)
            if fast == -1:
                break  # its literal is not all here yet: wait for more data
            if fast:
                pos = fast
                continue
            pos = idx + 2
            cmd2 = self._handle_line(line, cmd)
            m = _LITERAL_END.search(line) if line.endswith(b"}") else None
            if m:
                size = int(m.group(1))
                if size > self.max_literal:
                    raise self._too_large(size)
                if cmd2 is None:
                    cmd2 = _aio.Command("NIL", "unused", loop=self.loop)
                cmd2.begin_literal_data(size)
                self._cur = cmd2
            elif cmd2 is not None and cmd2.wait_data():
                self._cur = cmd2
            else:
                self._cur = None
        del buf[:pos]

    def _stream_spans(
        self, fc: StreamFetchCommand, take_span: TakeSpan, buf: bytearray, pos: int, end: int
    ) -> tuple[int, bool]:
        """``_stream_items`` for a caller that parses elsewhere: the run of usual-shape
        items from ``pos`` goes to ``take_span`` as bytes (``span_limit`` items at most a
        call), with one regex match per message here and nothing else."""
        match, first, n, wait, limit = SPAN_ITEM.match, pos, 0, False, fc.span_limit
        while True:
            if n == limit:
                if take_span(bytes(buf[first:pos]), n):
                    self._pause()
                    return pos, False
                first, n = pos, 0
            m = match(buf, pos)
            if m is None:
                break  # not the usual shape (or not a whole line yet)
            size = int(m[4])
            if size > self.max_literal:
                raise self._too_large(size)
            stop = m.end() + size
            if stop + 3 > end:
                wait = True
                break
            if not buf.startswith(b")\r\n", stop):
                break  # more items after the literal: the generic path
            pos = stop + 3
            n += 1
        if n and take_span(bytes(buf[first:pos]), n):
            self._pause()
        return pos, wait

    def _stream_items(
        self, fc: StreamFetchCommand, buf: bytearray, pos: int, end: int
    ) -> tuple[int, bool]:
        """Hand usual-shape messages from ``pos`` on to ``fc.take``. Returns the new read
        position and whether to wait for more data (an item not all here yet)."""
        match, take = _STREAM_ITEM.match, fc.take
        if take is None:
            return pos, False
        while not self._paused:
            m = match(buf, pos)
            if m is None:
                return pos, False  # not the usual shape (or not a whole line yet)
            eol = buf.find(b"\r\n", m.end())
            if eol < 0:
                return pos, False  # not a whole line yet
            brace = buf.rfind(b")] {", m.end(), eol)
            digits = buf[brace + 4 : eol - 1]
            if brace < 0 or buf[eol - 1] != 0x7D or not digits.isdigit():  # 0x7D: "}"
                return pos, False
            size = int(digits)
            if size > self.max_literal:
                raise self._too_large(size)
            start = eol + 2
            stop = start + size
            if stop + 3 > end:
                return pos, True
            if not buf.startswith(b")\r\n", stop):
                return pos, False  # more items after the literal: the generic path
            if take(int(m[1]), bytes(m[2]), int(m[3]), bytes(buf[start:stop])):
                self._pause()
            pos = stop + 3
        return pos, False

    def _fast_fetch(self, line: bytes, cur: Any, buf: bytearray, start: int, end: int) -> int:
        """The hot path of a big FETCH: ``* N FETCH (... {size}`` plus its literal, and the
        closing ``)``, go straight into the FETCH command's lines (same shape as the
        generic path produces). Returns the new read position, 0 to use the generic
        path, -1 when the literal has not fully arrived."""
        fc = self.pending_async_commands.get("FETCH")
        if type(fc) not in _FAST_FETCH or self.pending_sync_command is not None:
            return 0
        if cur is fc and line == b")":
            fc.append_to_resp(line)
            self._cur = None
            return start
        if cur is not None or not line.startswith(b"* ") or not line.endswith(b"}"):
            return 0
        if b" FETCH (" not in line[:32]:
            return 0
        m = _LITERAL_END.search(line)
        if m is None:
            return 0
        size = int(m.group(1))
        if size > self.max_literal:
            raise self._too_large(size)
        stop = start + size
        if stop > end:
            return -1
        fc.append_to_resp(line[2:])
        fc._resp_lines.append(bytearray(buf[start:stop]))
        if buf[stop : stop + 3] == b")\r\n":  # the usual end of the item: take it now
            fc._resp_lines.append(b")")
            fc._depth -= 1
            self._cur = None
            return stop + 3
        self._cur = fc  # the rest of the item (")" or more attributes) belongs to it
        return stop

    async def fetch(
        self,
        message_set: str,
        message_parts: str,
        by_uid: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (aioimaplib's signature)
    ) -> Any:
        return await self.execute(
            FastFetchCommand(
                self.new_tag(), message_set, message_parts,
                prefix="UID" if by_uid else "", loop=self.loop, timeout=timeout,
            )
        )  # fmt: skip

    async def fetch_changedsince(self, uid_set: str, items: str, modseq: int) -> Any:
        """``UID FETCH set (items) (CHANGEDSINCE n)`` (RFC 7162 3.1.4.1)."""
        return await self.execute(
            FastFetchCommand(
                self.new_tag(), uid_set, f"{items} (CHANGEDSINCE {modseq})",
                prefix="UID", loop=self.loop, timeout=None,
            )
        )  # fmt: skip

    async def run(
        self, name: str, *args: str, prefix: str = "", untagged: str | None = None
    ) -> Any:
        """Any other command, e.g. ``run("SEARCH", "UID", "1:*", prefix="UID")``."""
        return await self.execute(
            _aio.Command(
                name, self.new_tag(), *args, prefix=prefix or None,
                untagged_resp_name=untagged, loop=self.loop,
            )
        )  # fmt: skip


class FastIMAP4(_aio.IMAP4):  # type: ignore[misc]
    """aioimaplib's IMAP4 (or IMAP4 over TLS with ``ssl_context``) on FastProtocol."""

    def __init__(self, *args: Any, max_literal: int = MAX_LITERAL, **kw: Any) -> None:
        self._max_literal = max_literal
        super().__init__(*args, **kw)

    def create_client(
        self, host: str, port: int, loop: Any, conn_lost_cb: Any = None, ssl_context: Any = None
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = FastProtocol(local_loop, conn_lost_cb, max_literal=self._max_literal)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )
