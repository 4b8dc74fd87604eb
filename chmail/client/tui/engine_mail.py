"""``MailApi`` over the real mail engine: the cache, each account's Syncer and Outbox.

An account without a Syncer (tests, or a backend that could not be opened) still works
from the cache alone: reading cached bodies, flags and moves are then local edits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chmail.client.cache import Cache
from chmail.client.cache_models import Address, Folder, Message
from chmail.client.tui.api import Draft, Progress
from chmail.client.tui.sources import EmptySource, FolderSource, SearchSource, ThreadedSource
from chmail.client.tui.widgets.message_list import RowSource
from chmail.config import AccountConfig
from chmail.errors import ChmailError, MailError

log = logging.getLogger(__name__)


class SyncerLike(Protocol):
    online: bool
    status: str

    async def sync_all(self, progress: Any = None) -> Any: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    def on_change(self, listener: Callable[[int], None]) -> None: ...

    async def open_body(self, pk: int) -> bytes: ...

    async def set_flags(self, pk: int, add: set[str], remove: set[str]) -> Any: ...

    async def move(self, pk: int, folder: str) -> Any: ...


class OutboxLike(Protocol):
    async def send(
        self,
        *,
        to: list[str],
        cc: list[str],
        subject: str,
        body: str,
        in_reply_to: str | None = None,
        references: Sequence[str] = (),
    ) -> str: ...

    async def save_draft(self, draft: Any) -> int: ...

    async def delete_draft(self, draft_id: int) -> None: ...

    async def drafts(self) -> Sequence[Any]: ...


@dataclass
class AccountEngine:
    config: AccountConfig
    syncer: SyncerLike | None = None
    outbox: OutboxLike | None = None
    append: Callable[[str, bytes], Awaitable[Any]] | None = None
    close: Callable[[], Awaitable[None]] | None = None


class LazyFolder:
    """Resolves a folder name to its id on first use, then acts as the real source."""

    def __init__(self, mail: CacheMail, account: str, folder: str, sort: str, threaded: bool):
        self.mail, self.account, self.folder = mail, account, folder
        self.sort, self.threaded = sort, threaded
        self.inner: RowSource | None = None

    async def _source(self) -> RowSource:
        if self.inner is None:
            f = await self.mail.cache.folder_by_name(self.account, self.folder)
            if f is None:
                self.inner = EmptySource()
            elif self.threaded:
                self.inner = ThreadedSource(self.mail.cache, f.id)
            else:
                self.inner = FolderSource(self.mail.cache, f.id, self.sort)
        return self.inner

    async def count(self) -> int:
        return await (await self._source()).count()

    async def page(self, offset: int, limit: int) -> Sequence[Message]:
        return await (await self._source()).page(offset, limit)

    def depth_of(self, msg: Message) -> int:
        return self.inner.depth_of(msg) if self.inner is not None else 0


class CacheMail:
    """The TUI's mail engine over one cache shared by all accounts."""

    def __init__(self, cache: Cache, accounts: Mapping[str, AccountEngine]) -> None:
        self.cache = cache
        self.accounts = dict(accounts)
        self._local_drafts: dict[int, Draft] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start_live(self, on_change: Callable[[], None]) -> None:
        """Keep every account in sync in the background (IDLE, reconnect with backoff)."""
        for eng in self.accounts.values():
            if eng.syncer is not None:
                eng.syncer.on_change(lambda _folder_id: on_change())
                self._tasks.append(
                    asyncio.get_running_loop().create_task(eng.syncer.run(self._stop))
                )

    def state(self) -> tuple[str, str]:
        """("connected"|"offline"|"off"|"connecting", the first error in words)."""
        syncers = [e.syncer for e in self.accounts.values() if e.syncer is not None]
        if not syncers:
            return "local", ""
        bad = [s.status for s in syncers if not s.online]
        if not bad:
            return "connected", ""
        if all(b in ("not connected", "online") for b in bad):
            return "connecting", ""
        worst = next((b for b in bad if b.startswith("offline")), bad[0])
        return "offline", worst.removeprefix("offline: ")

    def account_names(self) -> list[str]:
        return list(self.accounts)

    def email_of(self, account: str) -> str:
        eng = self.accounts.get(account)
        return eng.config.email if eng else ""

    async def folders(self, account: str) -> list[Folder]:
        return await self.cache.folders(account)

    def folder_rows(self, account: str, folder: str, sort: str, threaded: bool) -> RowSource:
        return LazyFolder(self, account, folder, sort, threaded)

    def search_rows(self, account: str, query: str) -> RowSource:
        return SearchSource(self.cache, query, account)

    def _syncer(self, account: str) -> SyncerLike | None:
        eng = self.accounts.get(account)
        return eng.syncer if eng else None

    async def raw(self, msg: Message) -> bytes:
        syncer = self._syncer(msg.account)
        if syncer is not None:
            return await syncer.open_body(msg.pk)
        raw = await self.cache.body(msg.pk)
        if raw is None:
            raise MailError("This mail's text is not cached and the account is offline.")
        return raw

    async def set_flag(self, msg: Message, flag: str, on: bool) -> None:
        syncer = self._syncer(msg.account)
        add, remove = ({flag}, set()) if on else (set(), {flag})
        if syncer is not None:
            await syncer.set_flags(msg.pk, add=add, remove=remove)
            return
        current = await self.cache.get(msg.pk)
        flags = set(current.flags if current else msg.flags)
        await self.cache.set_flags(msg.pk, (flags | add) - remove)

    async def move(self, msg: Message, folder: str) -> Message | None:
        syncer = self._syncer(msg.account)
        if syncer is not None:
            await syncer.move(msg.pk, folder)
        else:
            target = await self.cache.folder_by_name(msg.account, folder)
            if target is None:
                raise MailError(f"There is no folder {folder!r} in {msg.account}.")
            await self.cache.move(msg.pk, target.id)
        return await self.cache.get(msg.pk)

    async def trash_folder(self, account: str) -> str:
        f = await self.cache.folder_by_use(account, "trash")
        if f is None:
            f = await self.cache.folder_by_name(account, "Trash")
        if f is None:
            await self.cache.upsert_folder(account, "Trash", special_use="trash")
            return "Trash"
        return f.name

    async def addresses(self, prefix: str, limit: int = 8) -> list[Address]:
        return await self.cache.addresses(prefix, limit)

    def _outbox(self, account: str) -> OutboxLike | None:
        eng = self.accounts.get(account)
        return eng.outbox if eng else None

    async def save_draft(self, draft: Draft) -> int:
        outbox = self._outbox(draft.account)
        if outbox is not None:
            return await outbox.save_draft(draft)
        ident = draft.draft_id or len(self._local_drafts) + 1
        self._local_drafts[ident] = draft
        return ident

    async def delete_draft(self, account: str, draft_id: int) -> None:
        outbox = self._outbox(account)
        if outbox is not None:
            await outbox.delete_draft(draft_id)
        self._local_drafts.pop(draft_id, None)

    async def drafts(self, account: str) -> list[Draft]:
        """Saved drafts of ``account``, newest first, ready to open in the editor."""
        outbox = self._outbox(account)
        if outbox is None:
            return [d for d in self._local_drafts.values() if d.account == account]
        out = []
        for stored in sorted(await outbox.drafts(), key=lambda d: -float(d.updated)):
            f = stored.fields
            out.append(
                Draft(
                    account=account,
                    to=_joined(f.get("to", "")),
                    cc=_joined(f.get("cc", "")),
                    subject=str(f.get("subject", "")),
                    body=str(f.get("body", "")),
                    in_reply_to=str(f.get("in_reply_to", "")),
                    references=tuple(f.get("references", ())),
                    draft_id=int(stored.id),
                )
            )
        return out

    async def send(self, draft: Draft) -> str:
        outbox = self._outbox(draft.account)
        if outbox is None:
            raise MailError("This account cannot send mail: it has no SMTP server configured.")
        return await outbox.send(
            to=split_addresses(draft.to),
            cc=split_addresses(draft.cc),
            subject=draft.subject,
            body=draft.body,
            in_reply_to=draft.in_reply_to or None,
            references=draft.references,
        )

    async def sync(self, account: str, progress: Progress) -> None:
        syncer = self._syncer(account)
        if syncer is None:
            return

        def report(done: int, total: int, folder: str) -> None:
            progress(f"Syncing {folder} {done}/{total}" if total else f"Syncing {folder}")

        await syncer.sync_all(progress=report)

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ChmailError):
                await asyncio.wait_for(task, 5)
        for eng in self.accounts.values():
            if eng.close is not None:
                with contextlib.suppress(ChmailError, OSError):
                    await eng.close()
        await self.cache.close()

    async def file_into_thread(self, message_id: str, raw: bytes) -> str:
        """Append ``raw`` to the folder holding ``message_id`` (e.g. a chat transcript)."""
        msg = await self.cache.by_message_id(message_id) if message_id else None
        if msg is None:
            raise MailError("The mail this chat was about is not in the cache; nothing filed.")
        eng = self.accounts.get(msg.account)
        if eng is None or eng.append is None:
            raise MailError("This account cannot file mail into its folders.")
        await eng.append(msg.folder, raw)
        return str(msg.folder)


def _joined(value: object) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def split_addresses(value: str) -> list[str]:
    return [a.strip() for a in value.split(",") if a.strip()]
