"""Two pieces of the sender's bookkeeping: the group committer and the send lock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from chmail.errors import ShopError
from shop_publicity import models as m
from shop_publicity.store import Store


@contextlib.contextmanager
def campaign_lock(data_dir: Path, cid: int) -> Iterator[None]:
    """Hold the campaign's send lock (released by the OS even on SIGKILL)."""
    path = data_dir / f"campaign-{cid}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ShopError(
                f"Campaign {cid} is being sent by another process; wait for it or pause it."
            ) from None
        yield
    finally:
        os.close(fd)


MAX_QUEUE = 512  # lazy writes committed without waiting for a demand past this many


class Committer:
    """Group commit: state changes from all connections share transactions.

    Writes are committed in the order they were posted (one batch at a time), so a
    writer that awaits its own write knows every earlier post is committed too.

    A post alone does not start a commit: ``post()`` is lazy, ``sync()`` (a writer that
    must know its write is durable: the sender's feeder claiming rows as 'sending'
    before any connection may start their DATA), ``flush()``, ``stop()`` or a long queue
    starts one. Each commit takes everything queued by then, so the claim also commits
    the connections' outcomes posted since the last one, and the cost of a commit is
    shared by a pool's worth of mails instead of paid per mail. While a commit runs, new
    posts and demands gather for the next one. All the posts of one batch share one
    future (no per-mail future in the hot path).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: list[m.Outcome] = []
        self.batch_done: asyncio.Future[None] | None = None  # made by start()
        self.inflight: asyncio.Future[None] | None = None
        self.wake = asyncio.Event()
        self.closing = False
        self.failed: Exception | None = None
        self.task: asyncio.Task[None] | None = None

    def _future(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        return fut

    def start(self) -> None:
        self.batch_done = self._future()
        self.task = asyncio.create_task(self._run())

    def post(self, outcome: m.Outcome) -> asyncio.Future[None]:
        """Queue a write; the future resolves once it is committed."""
        assert self.batch_done is not None, "Committer.start() first"
        self.queue.append(outcome)
        if len(self.queue) >= MAX_QUEUE:
            self.wake.set()
        return self.batch_done

    async def sync(self, fut: asyncio.Future[None]) -> None:
        """Wait until the write behind ``fut`` (and every earlier one) is committed."""
        if not fut.done():
            self.wake.set()
            await asyncio.shield(fut)
        elif fut.exception() is not None:
            await fut

    async def flush(self) -> None:
        """Wait until everything posted so far is committed (or has failed)."""
        fut = self.batch_done if self.queue else self.inflight
        if fut is not None and not fut.done():
            self.wake.set()
            await asyncio.wait([fut])

    async def write(self, outcome: m.Outcome) -> None:
        await self.sync(self.post(outcome))

    async def _run(self) -> None:
        while True:
            if not self.closing:
                await self.wake.wait()
            self.wake.clear()
            batch, self.queue = self.queue, []
            if not batch:
                if self.closing:
                    return
                continue
            fut = self.inflight = self.batch_done
            assert fut is not None
            self.batch_done = self._future()
            try:
                await self.store.apply(batch)
            except Exception as exc:  # awaiting writers re-raise it; the run stops on it
                self.failed = exc
                if not fut.done():
                    fut.set_exception(exc)
                continue
            if not fut.done():
                fut.set_result(None)

    async def stop(self) -> None:
        """Commit what is queued, then end."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await self.task


def _consume(fut: asyncio.Future[None]) -> None:
    # A posted write nobody awaits must not log "exception never retrieved":
    # Committer.failed carries the error to the sender instead.
    if not fut.cancelled():
        fut.exception()
