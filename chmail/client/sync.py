"""Mirror a mail store into the local cache, and push local changes back.

Rules:

* Incremental by UIDVALIDITY + UID (RFC 3501 2.3.1.1): a changed UIDVALIDITY voids every
  cached UID of the folder and the folder is fetched again; otherwise only UIDs the cache
  lacks are fetched, UIDs the server lost are dropped, and flags are refreshed (only what
  changed since HIGHESTMODSEQ when the server has CONDSTORE, RFC 7162).
* Headers first, in batches; the folder is usable as soon as they are stored, and the
  search index is filled right after in the background (a search waits for it).
  Bodies are fetched when a message is opened.
* Local changes (flags, move, delete) are applied to the cache at once and queued in
  ``pending_ops``; they reach the server now if it is reachable, else at the next sync,
  and always before that sync reads flags (so the server cannot undo them).
* ``run()`` keeps the account live: IDLE on the inbox (second connection), a full sync
  every ``interval`` seconds, and after a drop or a server restart, reconnects with
  exponential backoff plus jitter and resumes from what the cache holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from chmail.client import mime
from chmail.client.backends.base import Backend
from chmail.client.cache import Cache, Folder
from chmail.client.cache_models import DELETED
from chmail.client.gcpause import collector_paused
from chmail.errors import ChmailError, ConnectionLost, MailError

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # done, total, folder
Listener = Callable[[int], None]  # folder id that changed


@dataclass
class SyncResult:
    folder: str
    new: int = 0
    removed: int = 0
    flags_changed: int = 0
    reset: bool = False


class Syncer:
    """Sync one account's ``backend`` into ``cache``. ``watcher`` (a second backend of the
    same account) is used for IDLE so that the first one stays free for the user's actions."""

    def __init__(
        self,
        cache: Cache,
        backend: Backend,
        account: str,
        *,
        watcher: Backend | None = None,
        interval: float = 300.0,
        idle_seconds: float = 25 * 60,  # RFC 2177: re-issue IDLE at least every 29 minutes
        backoff_max: float = 60.0,
        fetch_first: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.cache = cache
        self.backend = backend
        self.watcher = watcher
        self.account = account
        self.interval = interval
        self.idle_seconds = idle_seconds
        self.backoff_max = backoff_max
        self.fetch_first = fetch_first  # e.g. a POP3 download into the Maildir synced here
        self.online = False
        self.status = "not connected"
        self._listeners: list[Listener] = []
        self._pushed = asyncio.Event()

    # ------------------------------------------------------------ listeners

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(folder_id)`` whenever a folder's cached contents change."""
        self._listeners.append(listener)

    def _changed(self, folder_id: int) -> None:
        for fn in list(self._listeners):
            try:
                fn(folder_id)
            except Exception:
                log.exception("sync listener failed")

    # ------------------------------------------------------------ sync

    async def connect(self) -> None:
        await self.backend.connect()
        self.online = True
        self.status = "online"

    async def sync_folders(self) -> list[Folder]:
        """Mirror the folder list: new folders appear, folders deleted elsewhere go."""
        infos = [i for i in await self.backend.folders() if i.selectable]
        for info in infos:
            await self.cache.upsert_folder(
                self.account, info.name, delimiter=info.delimiter, special_use=info.special_use
            )
        names = {i.name for i in infos}
        if not names:  # a server listing nothing at all is broken, not empty: keep the cache
            return await self.cache.folders(self.account)
        for f in await self.cache.folders(self.account):
            if f.name not in names:
                log.info("%s/%s is gone from the server; dropping it", self.account, f.name)
                await self.cache.delete_folder(f.id)
        return await self.cache.folders(self.account)

    async def sync_all(self, progress: Progress | None = None) -> list[SyncResult]:
        if self.fetch_first is not None:
            await self.fetch_first()
        folders = await self.sync_folders()
        await self.push_pending()
        out = []
        for f in folders:
            try:
                out.append(await self.sync_folder(f.name, progress))
            except ConnectionLost:
                raise
            except MailError as exc:  # one bad folder must not stop the others
                log.warning("%s/%s: %s", self.account, f.name, exc)
        return out

    async def sync_folder(self, name: str, progress: Progress | None = None) -> SyncResult:
        res = SyncResult(name)
        folder = await self.cache.folder_by_name(self.account, name)
        if folder is None:
            folder = await self.cache.upsert_folder(self.account, name)
        state = await self.backend.state(name)
        if folder.uidvalidity and folder.uidvalidity != state.uidvalidity:
            log.info("%s/%s: UIDVALIDITY changed, resyncing", self.account, name)
            await self.cache.reset_folder(folder.id, state.uidvalidity)
            res.reset = True
            folder = await self.cache.folder(folder.id) or folder
        cached = await self.cache.uid_flags(folder.id)
        new: list[int] | None
        if cached:
            server = await self.backend.uids(name)
            server_set = set(server)
            gone = [u for u in cached if u not in server_set and u > 0]
            if gone:
                await self.cache.remove_uids(folder.id, gone)
                res.removed = len(gone)
            new = [u for u in server if u not in cached]
            total = len(new)
        else:  # a first sync: every message is new, the FETCH itself says which UIDs
            new, total = (None, state.exists) if state.exists else ([], 0)
        if progress:
            progress(0, total, name)
        done = 0
        # The backend parses a batch while the cache moves the previous one in (its
        # reader pauses only while a batch is staged: cache_stage.py says why).
        with collector_paused():
            async with (
                contextlib.aclosing(self.backend.headers(name, new)) as batches,
                self.cache.ingest(folder.id, uidvalidity=state.uidvalidity) as sink,
            ):
                async for batch in batches:
                    done += await sink.add(batch)
                    if progress:
                        progress(done, max(total, done), name)
        res.new = done
        res.flags_changed = await self._sync_flags(folder, state.highestmodseq, cached, new or [])
        await self.cache.set_folder_state(
            folder.id,
            uidvalidity=state.uidvalidity,
            uidnext=state.uidnext,
            highestmodseq=state.highestmodseq,
        )
        self.cache.index_soon()  # search waits for it; the folder is usable now
        if res.new or res.removed or res.flags_changed or res.reset:
            self._changed(folder.id)
        return res

    async def _sync_flags(
        self, folder: Folder, modseq: int, cached: dict[int, frozenset[str]], new: list[int]
    ) -> int:
        if not cached:
            return 0
        if folder.highestmodseq and modseq:
            if modseq == folder.highestmodseq:
                return 0
            server = await self.backend.flags(folder.name, folder.highestmodseq)
        else:
            server = await self.backend.flags(folder.name)
        fresh = set(new)
        changes = {
            uid: flags
            for uid, flags in server.items()
            if uid in cached and uid not in fresh and _norm(flags) != _norm(cached[uid])
        }
        if changes:
            await self.cache.update_flags(folder.id, changes)
        return len(changes)

    # ------------------------------------------------------------ bodies

    async def open_body(self, pk: int) -> bytes:
        """The raw source of a message: from the cache, else fetched and cached."""
        raw = await self.cache.body(pk)
        if raw is not None:
            return raw
        msg = await self.cache.get(pk)
        if msg is None:
            raise MailError("That message is no longer in the cache; sync and try again.")
        if msg.uid <= 0:
            raise MailError("That message is being moved; open it again in a moment.")
        raw = await self.backend.body(msg.folder, msg.uid)
        parsed = mime.parse(raw)
        await self.cache.set_body(
            pk, raw, parsed.text[: mime.MAX_INDEXED_TEXT], len(parsed.attachments)
        )
        return raw

    # ------------------------------------------------------------ local changes

    async def set_flags(self, pk: int, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        add, remove = set(add), set(remove)
        msg = await self.cache.get(pk)
        if msg is None:
            return
        await self.cache.set_flags(pk, (msg.flags | add) - remove)
        arg = json.dumps({"add": sorted(add), "remove": sorted(remove)})
        await self.cache.queue_op(self.account, "flags", msg.folder, msg.uid, arg)
        self._changed(msg.folder_id)
        await self._try_push()

    async def move(self, pk: int, dest: str) -> None:
        msg = await self.cache.get(pk)
        if msg is None or msg.folder == dest:
            return
        target = await self.cache.folder_by_name(self.account, dest)
        if target is None:
            raise MailError(f"There is no folder {dest!r} in account {self.account}.")
        await self.cache.queue_op(
            self.account, "move", msg.folder, msg.uid, json.dumps({"dest": dest, "pk": pk})
        )
        await self.cache.move(pk, target.id, new_uid=-pk)  # placeholder until the server says
        self._changed(msg.folder_id)
        self._changed(target.id)
        await self._try_push()

    async def copy(self, pk: int, dest: str) -> None:
        """Copy to another folder (the copy appears there at the next sync of it)."""
        msg = await self.cache.get(pk)
        if msg is None or msg.folder == dest:
            return
        await self.cache.queue_op(
            self.account, "copy", msg.folder, msg.uid, json.dumps({"dest": dest})
        )
        await self._try_push()

    async def append(self, folder: str, raw: bytes, flags: Iterable[str] = ()) -> int | None:
        """Store a message in a folder of the server (Sent, Drafts...) and sync that folder."""
        uid = await self.backend.append(folder, raw, flags)
        await self.sync_folder(folder)
        return uid

    async def delete(self, pk: int, *, permanent: bool = False) -> None:
        """Move to Trash; from Trash itself (or with ``permanent``) delete for good."""
        msg = await self.cache.get(pk)
        if msg is None:
            return
        trash = await self.cache.folder_by_use(self.account, "trash")
        if not permanent and trash is not None and trash.id != msg.folder_id:
            await self.move(pk, trash.name)
            return
        await self.cache.queue_op(self.account, "delete", msg.folder, msg.uid)
        await self.cache.delete(pk)
        self._changed(msg.folder_id)
        await self._try_push()

    async def _try_push(self) -> None:
        if not self.online:
            return
        try:
            await self.push_pending()
        except ConnectionLost as exc:
            self.online = False
            self.status = f"offline: {exc}"
            log.info("queued for later: %s", exc)

    async def push_pending(self) -> int:
        """Send queued local changes to the server, oldest first."""
        n = 0
        for op in await self.cache.pending_ops(self.account):
            try:
                await self._apply(op.kind, op.folder, op.uid, op.arg)
            except ConnectionLost:
                raise
            except MailError as exc:  # the server refused (message gone...): drop the op
                log.warning("dropping %s on %s/%s: %s", op.kind, op.folder, op.uid, exc)
            await self.cache.done_op(op.id)
            n += 1
        return n

    async def _apply(self, kind: str, folder: str, uid: int, arg: str) -> None:
        if uid <= 0:
            return
        if kind == "flags":
            spec = json.loads(arg)
            await self.backend.store_flags(folder, [uid], spec["add"], spec["remove"])
        elif kind == "move":
            spec = json.loads(arg)
            mapping = await self.backend.move(folder, [uid], spec["dest"])
            target = await self.cache.folder_by_name(self.account, spec["dest"])
            if target is not None:
                await self.cache.rekey(target.id, -int(spec["pk"]), mapping.get(uid))
        elif kind == "copy":
            await self.backend.copy(folder, [uid], json.loads(arg)["dest"])
        elif kind == "delete":
            await self.backend.store_flags(folder, [uid], [DELETED])
            await self.backend.expunge(folder, [uid])

    # ------------------------------------------------------------ live

    async def run(self, stop: asyncio.Event, *, idle_folder: str = "INBOX") -> None:
        """Stay in sync until ``stop`` is set (see the module docstring)."""
        backoff = 1.0
        while not stop.is_set():
            try:
                if not self.online:
                    await self.connect()
                    if self.watcher is not None:
                        await self.watcher.connect()
                await self.sync_all()
                backoff = 1.0
                await self._live(stop, idle_folder)
            except ChmailError as exc:
                self.online = False
                self.status = f"offline: {exc}"
                log.info("%s: %s; retrying in %.0f s", self.account, exc, backoff)
                for b in (self.backend, self.watcher):
                    if b is not None:
                        with contextlib.suppress(ChmailError):
                            await b.close()
                delay = backoff * (0.5 + random.random())  # jitter: clients do not stampede
                backoff = min(backoff * 2, self.backoff_max)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        for b in (self.backend, self.watcher):
            if b is not None:
                with contextlib.suppress(ChmailError):
                    await b.close()
        self.online = False
        self.status = "stopped"

    async def _live(self, stop: asyncio.Event, idle_folder: str) -> None:
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        watcher = self.watcher or self.backend
        while not stop.is_set():
            # Close the gap between the last sync and IDLE: SELECT on the watcher, and sync
            # now if the folder moved on meanwhile (IDLE only reports later changes).
            state = await watcher.state(idle_folder)
            cached = await self.cache.folder_by_name(self.account, idle_folder)
            if cached is None or (state.uidnext, state.highestmodseq, state.exists) != (
                cached.uidnext,
                cached.highestmodseq,
                cached.total,
            ):
                await self.push_pending()
                await self.sync_folder(idle_folder)
            wait = min(self.idle_seconds, max(1.0, self.interval - (loop.time() - last_full)))
            idle = asyncio.ensure_future(watcher.wait_changes(idle_folder, wait))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({idle, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper not in done:
                stopper.cancel()
            if idle not in done:
                idle.cancel()
                with contextlib.suppress(asyncio.CancelledError, ChmailError):
                    await idle
                return
            changed = idle.result()
            if changed:
                await self.push_pending()
                await self.sync_folder(idle_folder)
            if loop.time() - last_full >= self.interval:
                await self.sync_all()
                last_full = loop.time()


def _norm(flags: Iterable[str]) -> frozenset[str]:
    return frozenset(f for f in flags if f != "\\Recent")
