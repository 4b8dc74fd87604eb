"""Header parsing in helper processes, so a big sync uses the machine's other cores.

A first sync of a big folder is bound by one core: the event loop reads the FETCH, parses
every header block and stages the rows, all under one GIL. Parsing and staging are the
largest part and need nothing but the bytes, so for a big FETCH (``WORKER_MIN`` messages
or more) the reader only finds where each message ends (one regex match) and ships the
FETCH's bytes, as they came, in chunks of about ``CHUNK`` messages to the helpers
(``ParsePool``: ``HELPERS`` processes ``python -m chmail.client.backends.parse_child``,
each chunk to the ready one owing the fewest), which parse them (``span_rows``: the same
reading as ``sync_message``) and send each back as cache rows; the loop meanwhile reads on
and hands what has come back, in order, to the cache.

Wire, both ways over the helper's stdin/stdout: frames of a 4-byte big-endian length and a
body. The helper first says ``READY`` (an empty frame) once it has imported what it needs;
until then the parent parses chunks itself. Parent to helper: a run of whole FETCH items
of the usual shape, as the server sent them (``imap_headers.SPAN_ITEM``); helper to
parent: the items parsed, as a serialized SQLite database of cache rows
(``cache_stage.image``), which the parent hands to the cache as a ``StagedBatch``
without reading it: the event loop does no per-message work for it at all (it used to
decode, build and bind every message: half of its time in a big sync).

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
import functools
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from chmail.client.backends.imap_parse import Every
from chmail.client.backends.parse_child import READY, frame, parse_span
from chmail.client.cache_models import Batch, StagedBatch
from chmail.client.cache_stage import IMAGE_MAGIC

log = logging.getLogger(__name__)

WORKER_MIN = 2000  # messages in one FETCH before the helper is worth its round trips
CHUNK = 500  # messages per frame to the helper
MIN_CHUNK = 125  # the last chunks halve down to this (the last one is not overlapped)
MAX_INFLIGHT = 12  # chunks sent and not answered before the reader pauses
MAX_FRAME = 256 * 1024 * 1024  # bytes; a larger frame from the helper is garbage
ANSWER_TIMEOUT = 30.0  # seconds without an answer while one is owed: the helper is stuck
# Helper processes: two on a machine with two cores or more (the loop, the cache's thread
# and a local server use the rest), one on a single core.
HELPERS = 2 if (os.cpu_count() or 1) > 1 else 1
PIPE_SIZE = 1 << 20  # bytes, asked of the kernel for each pipe
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


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
        self._owed: collections.deque[tuple[asyncio.Future[Batch], bytes, int]]
        self._owed = collections.deque()
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._writing = False
        self._wfd = self._rfd = -1  # the pipes to the helper's stdin, from its stdout
        self._started = False  # it said READY
        self._timer: asyncio.TimerHandle | None = None
        self.broken = False

    def load(self) -> tuple[bool, int]:
        """What a pool weighs when it picks a helper: (not ready to parse, chunks sent and
        not answered yet); a helper still starting counts as busier than any ready one."""
        ready = self._proc is not None and self._proc.poll() is None and self._ready()
        return not ready, len(self._owed)

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

    def submit(self, span: bytes, count: int) -> asyncio.Future[Batch]:
        """A future of the ``count`` messages of a run of FETCH items, parsed (a
        ``StagedBatch`` from the helper, a list if parsed here), in submission order. It
        never fails: whatever happens to the helper, the chunk is parsed (in the parent
        if need be)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Batch] = loop.create_future()
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
        if not body.startswith(IMAGE_MAGIC):  # (the row count is checked as it is read)
            self._fail("the parse helper sent garbage")
            return False
        fut, span, count = self._owed.popleft()
        if not fut.done():
            fut.set_result(StagedBatch(body, count, functools.partial(parse_span, span)))
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
    """``imap_parse.HeaderBatches`` for a big FETCH of which every message is wanted (a
    ``1:*`` or a range of new UIDs only: the helper's batches are not filtered): the
    reader hands over runs of raw items (``take_span``), which go to the helper in
    chunks; ``ready`` is set when a full batch of answers is in, or the reader waits on
    them (``MAX_INFLIGHT`` chunks owed); ``drain`` hands answered chunks over in order;
    ``finish`` sends the rest and hands on each answer as it comes."""

    def __init__(self, wanted: Every, worker: ParseWorker | ParsePool, size: int = CHUNK) -> None:
        self.wanted = wanted
        self.worker = worker
        self.size = max(1, size)
        self.chunk = min(CHUNK, self.size)
        self.ready = asyncio.Event()
        self._spans: list[bytes] = []
        self._n = 0  # messages in _spans
        self._owed: collections.deque[asyncio.Future[Batch]] = collections.deque()
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

    def _pop(self) -> Batch:
        return self._owed.popleft().result()

    def _answered(self, _fut: object) -> None:
        """Ready when a full batch is answered, or when the reader waits on the answers."""
        done = 0
        for fut in self._owed:
            if not fut.done():
                break
            done += 1
        if done and (done * self.chunk >= self.size or len(self._owed) >= MAX_INFLIGHT):
            self.ready.set()

    def drain(self) -> list[Batch]:
        """The answered chunks, oldest first, up to ``size`` messages."""
        out: list[Batch] = []
        while self._owed and self._owed[0].done() and (len(out) + 1) * self.chunk <= self.size:
            out.append(self._pop())
        self.ready.clear()
        self._answered(None)
        return out

    async def finish(self) -> AsyncIterator[Batch]:
        """Once the FETCH is over: the last chunk goes out, and each answer is handed on
        as it comes (storing one overlaps parsing the next)."""
        if self._spans:
            self._send()
        self.ready.clear()
        while self._owed:
            await asyncio.wait([self._owed[0]])
            yield self._pop()


class ParsePool:
    """``HELPERS`` helpers sharing the chunks (``WorkerBatches`` puts the answers back
    in order): parsing and staging a chunk costs the helper more than reading it costs
    the loop, so one helper alone is what a big sync waits on."""

    def __init__(self, size: int) -> None:
        self.workers = [ParseWorker() for _ in range(max(1, size))]
        self._next = 0

    @property
    def answered(self) -> int:
        return sum(w.answered for w in self.workers)

    def start(self) -> bool:
        """Start every helper not running; False if none can be used."""
        return any([w.start() for w in self.workers])  # (a list: start them all)

    def submit(self, span: bytes, count: int) -> asyncio.Future[Batch]:
        """``ParseWorker.submit`` on the ready helper owing the fewest chunks, the next
        in turn among equals: a helper slowed down (sharing its core) gets less, and the
        last chunks of a sync do not queue behind one helper while the other idles. If
        none is ready, the next in turn parses it here (ParseWorker.submit)."""
        workers = self.workers
        n = len(workers)
        best, best_load = -1, (True, 0)
        for i in range(n):
            k = (self._next + i) % n
            if workers[k].broken:
                continue
            load = workers[k].load()
            if best < 0 or load < best_load:
                best, best_load = k, load
        if best < 0:
            return workers[0].submit(span, count)
        self._next = (best + 1) % n
        return workers[best].submit(span, count)

    def close(self) -> None:
        for w in self.workers:
            w.close()


_shared: ParsePool | None = None


def shared() -> ParsePool:
    """The program's helpers (started at first use, stopped at exit)."""
    global _shared
    if _shared is None:
        _shared = ParsePool(HELPERS)
        atexit.register(_shared.close)
    return _shared
