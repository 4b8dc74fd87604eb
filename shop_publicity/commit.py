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


COALESCE_S = 0.0005  # seconds: lets the other connections' writes join the batch


def _consume(fut: asyncio.Future[None]) -> None:
    # A posted write nobody awaits must not log "exception never retrieved":
    # Committer.failed carries the error to the sender instead.
    if not fut.cancelled():
        fut.exception()


class Committer:
    """Group commit: state changes from all connections share transactions.

    Writes are committed in the order they were posted (one batch at a time), so a
    writer that awaits its own write knows every earlier post is committed too.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: list[tuple[m.Outcome, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.closing = False
        self.failed: Exception | None = None
        self.unsettled: set[asyncio.Future[None]] = set()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def post(self, outcome: m.Outcome) -> asyncio.Future[None]:
        """Queue a write; the future resolves once it is committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self.unsettled.add(fut)
        fut.add_done_callback(self.unsettled.discard)
        self.queue.append((outcome, fut))
        self.wake.set()
        return fut

    async def flush(self) -> None:
        """Wait until everything posted so far is committed (or has failed)."""
        if self.unsettled:
            await asyncio.wait(list(self.unsettled))

    async def write(self, outcome: m.Outcome) -> None:
        await self.post(outcome)

    async def _run(self) -> None:
        while True:
            if not self.closing:
                await self.wake.wait()
                if COALESCE_S:
                    await asyncio.sleep(COALESCE_S)
            self.wake.clear()
            batch, self.queue = self.queue, []
            if not batch:
                if self.closing:
                    return
                continue
            try:
                await self.store.apply([o for o, _ in batch])
            except Exception as exc:  # awaiting writers re-raise it; the run stops on it
                self.failed = exc
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def stop(self) -> None:
        """Commit what is queued, then end."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await self.task
