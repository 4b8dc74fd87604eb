"""Header parsing in a helper process, so a big sync uses the machine's second core.

A first sync of a big folder is bound by one core: the event loop reads the FETCH, parses
every header block and stages the rows, all under one GIL. Parsing is the largest part
and needs nothing but the bytes, so for a big FETCH (``WORKER_MIN`` messages or more) the
reader only finds where each message ends (one regex match) and ships the FETCH's bytes,
as they came, in chunks of about ``CHUNK`` messages to one helper process (``python -m
chmail.client.backends.parse_child``), which cuts and parses them with the same
``sync_message`` and sends the results back in order; the loop meanwhile reads on and
stores what has come back.

Wire, both ways over the helper's stdin/stdout: frames of a 4-byte big-endian length and a
body. The helper first says ``READY`` (an empty frame) once it has imported what it needs;
until then the parent parses chunks itself. Parent to helper: a run of whole FETCH items
of the usual shape, as the server sent them (``imap_headers.SPAN_ITEM``); helper to
parent: a msgpack array of one array of the 14 ``NewMessage`` fields per item, in order.

Nothing depends on the helper: if it cannot start, dies, or sends garbage, every chunk it
still owed is parsed in the parent (the chunk's bytes are kept until its answer), a
warning is logged once, and later syncs parse in the parent. The helper lives as long as
the program (it is started at the first big sync and reused), exits when its stdin closes
(the parent exited or was killed), and ignores the terminal's Ctrl-C.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Set
from pathlib import Path

import msgspec

from chmail.client.backends.imap_parse import Every
from chmail.client.backends.parse_child import READY, frame, parse_span
from chmail.client.cache_models import NewMessage

log = logging.getLogger(__name__)

WORKER_MIN = 2000  # messages in one FETCH before the helper is worth its round trips
CHUNK = 500  # messages per frame to the helper
MIN_CHUNK = 125  # the last chunks halve down to this (the last one is not overlapped)
MAX_INFLIGHT = 12  # chunks sent and not answered before the reader pauses
MAX_FRAME = 256 * 1024 * 1024  # bytes; a larger frame from the helper is garbage
ANSWER_TIMEOUT = 30.0  # seconds without an answer while one is owed: the helper is stuck
PIPE_SIZE = 1 << 20  # bytes, asked of the kernel for each pipe
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_Fields = tuple[
    int, str, str, list[str], str, str, str, str, str, int, tuple[str, ...], int,
    list[tuple[str, str]], list[tuple[str, str]],
]  # fmt: skip
_RESULTS = msgspec.msgpack.Decoder(list[_Fields])


class ParseWorker:
    """The parent's side of the helper process (see the module docstring)."""

    def __init__(
        self, argv: list[str] | None = None, *, answer_timeout: float = ANSWER_TIMEOUT
    ) -> None:
        self.argv = argv or [sys.executable, "-m", "chmail.client.backends.parse_child"]
        self.answer_timeout = answer_timeout
        self.answered = 0  # chunks the helper parsed (not counting any parsed here)
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owed: collections.deque[tuple[asyncio.Future[list[NewMessage]], bytes, int]]
        self._owed = collections.deque()
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._writing = False
        self._wfd = self._rfd = -1  # the pipes to the helper's stdin, from its stdout
        self._started = False  # it said READY
        self._timer: asyncio.TimerHandle | None = None
        self.broken = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> bool:
        """Start the helper if it is not running; False if it cannot be used."""
        if self.broken:
            return False
        if self._proc is not None:
            if self._proc.poll() is None:
                return True
            if self._owed:
                self._fail("the parse helper exited")
                return False
            self.close()  # it exited while idle: start a new one

        root = str(Path(__file__).resolve().parents[3])  # the folder holding chmail/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            self._give_up(f"could not start the parse helper ({exc})")
            return False
        stdin, stdout = self._proc.stdin, self._proc.stdout
        if stdin is None or stdout is None:  # (not with PIPE; for the type checker)
            self._give_up("the parse helper has no pipes")
            return False
        self._wfd, self._rfd = stdin.fileno(), stdout.fileno()
        for fd in (self._wfd, self._rfd):
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):  # fewer, larger writes (Linux; 64 KiB else)
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        return True

    def submit(self, span: bytes, count: int) -> asyncio.Future[list[NewMessage]]:
        """A future of the ``count`` messages of a run of FETCH items, parsed, in
        submission order. It never fails: whatever happens to the helper, the chunk is
        parsed (in the parent if need be)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[NewMessage]] = loop.create_future()
        if not self.start() or not self._ready() or not self._bind(loop):
            fut.set_result(parse_span(span))
            return fut
        if not self._owed:
            loop.add_reader(self._rfd, self._readable)
        self._owed.append((fut, span, count))
        if len(self._owed) == 1:
            self._arm()
        self._wbuf += frame(span)
        self._flush()
        return fut

    def _ready(self) -> bool:
        """Has the helper said READY (its imports done)? Until then chunks are parsed
        here, while it starts on the other core (a cold start takes ~0.2 s)."""
        if not self._started:
            try:
                said = os.read(self._rfd, len(READY))  # nothing else comes before it
            except BlockingIOError:
                return False
            except OSError as exc:
                self._give_up(f"the parse helper could not be read ({exc})")
                return False
            if said != READY:
                self._give_up("the parse helper did not start as expected")
                return False
            self._started = True
        return True

    def _bind(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Use ``loop`` for the helper's pipes (an idle helper moves to a new loop)."""
        if self._loop is not loop:
            if self._owed:  # answers owed to another loop: not ours to read
                return False
            self._loop = loop
        return True

    def _flush(self) -> None:
        if self._proc is None or self._loop is None:
            return
        fd = self._wfd
        try:
            while self._wbuf:
                n = os.write(fd, self._wbuf)
                del self._wbuf[:n]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(f"the parse helper stopped reading ({exc})")
            return
        if self._wbuf and not self._writing:
            self._loop.add_writer(fd, self._flush)
            self._writing = True
        elif not self._wbuf and self._writing:
            self._loop.remove_writer(fd)
            self._writing = False

    def _readable(self) -> None:
        if self._proc is None:
            return
        try:
            data = os.read(self._rfd, PIPE_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"the parse helper's answers could not be read ({exc})")
            return
        if not data:
            self._fail("the parse helper exited")
            return
        buf = self._rbuf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if n > MAX_FRAME:
                self._fail(f"the parse helper sent a {n:,}-byte frame")
                return
            if len(buf) - pos - 4 < n:
                break
            body = bytes(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            if not self._answer(body):
                return
        del buf[:pos]
        if not self._owed and self._loop is not None:
            self._loop.remove_reader(self._rfd)

    def _answer(self, body: bytes) -> bool:
        if not self._owed:
            self._fail("the parse helper answered a chunk that was not sent")
            return False
        try:
            fields = _RESULTS.decode(body)
        except msgspec.DecodeError as exc:
            self._fail(f"the parse helper sent garbage ({exc})")
            return False
        fut, _span, count = self._owed[0]
        if len(fields) != count:
            self._fail("the parse helper answered with the wrong number of messages")
            return False
        self._owed.popleft()
        if not fut.done():
            fut.set_result([NewMessage(*f) for f in fields])
        self.answered += 1
        self._arm()
        return True

    def _arm(self) -> None:
        """Watch for a helper that stops answering (alive but stuck)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._owed and self._loop is not None:
            why = f"the parse helper did not answer in {self.answer_timeout} s"
            self._timer = self._loop.call_later(self.answer_timeout, self._fail, why)

    def _fail(self, why: str) -> None:
        """The helper is unusable: parse what it owed here, and stop using it."""
        owed, self._owed = self._owed, collections.deque()
        self._give_up(why)
        for fut, span, _count in owed:
            if not fut.done():
                fut.set_result(parse_span(span))

    def _give_up(self, why: str) -> None:
        log.warning("%s; headers are parsed in the main process from now on", why)
        self.broken = True
        self.close(kill=True)

    def _reset(self) -> None:
        self._started = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._rbuf.clear()
        self._wbuf.clear()
        self._writing = False
        self._loop = None

    def close(self, *, kill: bool = False) -> None:
        """Stop the helper: its stdin closes and it exits (``kill``: at once)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._rfd)
            loop.remove_writer(self._wfd)
        self._reset()
        if kill:
            proc.kill()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerBatches:
    """``imap_parse.HeaderBatches`` for a big FETCH: the reader hands over runs of raw
    items (``take_span``), which go to the helper in chunks; ``ready`` is set when a full
    batch of answers is in, or the reader waits on them (``MAX_INFLIGHT`` chunks owed);
    ``drain`` hands answered chunks over in order; ``finish`` sends the rest and hands on
    each answer as it comes."""

    def __init__(self, wanted: Set[int], worker: ParseWorker, size: int = CHUNK) -> None:
        self.wanted = wanted
        self.worker = worker
        self.size = max(1, size)
        self.chunk = min(CHUNK, self.size)
        self.ready = asyncio.Event()
        self._spans: list[bytes] = []
        self._n = 0  # messages in _spans
        self._owed: collections.deque[asyncio.Future[list[NewMessage]]] = collections.deque()
        self._left = len(wanted)

    def take_span(self, span: bytes, n: int) -> bool:
        if self._n and self._n + n > self.chunk:  # (the reader gives chunk items at most)
            self._send()
        self._spans.append(span)
        self._n += n
        self._left -= n
        # the last chunks halve: the last answer is waited for with nothing to overlap
        if self._n >= self.chunk or (self._n >= self._left and self._n >= MIN_CHUNK):
            self._send()
        return len(self._owed) >= MAX_INFLIGHT

    def _send(self) -> None:
        span = self._spans[0] if len(self._spans) == 1 else b"".join(self._spans)
        fut = self.worker.submit(span, self._n)
        self._spans, self._n = [], 0
        self._owed.append(fut)
        fut.add_done_callback(self._answered)

    def _pop(self) -> list[NewMessage]:
        got = self._owed.popleft().result()
        if isinstance(self.wanted, Every):  # a 1:* FETCH: whatever came is wanted
            return got
        wanted = self.wanted  # (a UID range may hold messages the cache already has)
        return [m for m in got if m.uid in wanted]

    def _answered(self, _fut: object) -> None:
        """Ready when a full batch is answered, or when the reader waits on the answers."""
        done = 0
        for fut in self._owed:
            if not fut.done():
                break
            done += 1
        if done and (done * self.chunk >= self.size or len(self._owed) >= MAX_INFLIGHT):
            self.ready.set()

    def drain(self) -> list[NewMessage]:
        """The answered chunks, oldest first, up to ``size`` messages (fewer, larger
        batches to store: each store has a fixed cost)."""
        out: list[NewMessage] = []
        while self._owed and self._owed[0].done() and len(out) + self.chunk <= self.size:
            out += self._pop()
        self.ready.clear()
        self._answered(None)
        return out

    async def finish(self) -> AsyncIterator[list[NewMessage]]:
        """Once the FETCH is over: the last chunk goes out, and each answer is handed on
        as it comes (storing one overlaps parsing the next)."""
        if self._spans:
            self._send()
        self.ready.clear()
        while self._owed:
            await asyncio.wait([self._owed[0]])
            yield self._pop()


_shared: ParseWorker | None = None


def shared() -> ParseWorker:
    """The program's helper (started at first use, stopped at exit)."""
    global _shared
    if _shared is None:
        _shared = ParseWorker()
        atexit.register(_shared.close)
    return _shared
