"""Row sources over the cache for the message list: a folder (flat or threaded), a search.

Flat: one indexed ``page()`` per screenful. Threaded: threads ordered by their newest
message in this folder, each thread's messages oldest first, replies indented. The
threaded order is built lazily, as far as the rows asked for, so the first screen costs
one page and a few thread look-ups whatever the folder's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from chmail.client.cache import Cache
from chmail.client.cache_models import Message

SEARCH_LIMIT = 2000
SCAN_PAGE = 500


class FolderSource:
    """A cached folder in one sort order."""

    def __init__(self, cache: Cache, folder_id: int, sort: str = "date-desc") -> None:
        self.cache = cache
        self.folder_id = folder_id
        self.sort = sort

    async def count(self) -> int:
        return await self.cache.count(self.folder_id)

    async def page(self, offset: int, limit: int) -> Sequence[Message]:
        return await self.cache.page(self.folder_id, offset, limit, self.sort)

    def depth_of(self, msg: Message) -> int:
        return 0


class ThreadedSource:
    """A cached folder as threads, newest activity first."""

    def __init__(self, cache: Cache, folder_id: int) -> None:
        self.cache = cache
        self.folder_id = folder_id
        self.rows: list[Message] = []
        self.depth: dict[int, int] = {}
        self._emitted: set[int] = set()
        self._scanned = 0
        self._total = -1
        self._lock = asyncio.Lock()

    async def count(self) -> int:
        if self._total < 0:
            self._total = await self.cache.count(self.folder_id)
        return self._total

    async def page(self, offset: int, limit: int) -> Sequence[Message]:
        async with self._lock:
            total = await self.count()
            while len(self.rows) < min(offset + limit, total) and self._scanned < total:
                await self._scan()
        return self.rows[offset : offset + limit]

    async def _scan(self) -> None:
        await self.cache.index_pending()  # rows a sync just stored get their thread ids
        batch = await self.cache.page(self.folder_id, self._scanned, SCAN_PAGE, "date-desc")
        self._scanned += SCAN_PAGE
        if not batch:
            self._scanned = self._total
        for msg in batch:
            if msg.pk in self._emitted:
                continue
            members = [
                m for m in await self.cache.thread(msg.thread_id) if m.folder_id == msg.folder_id
            ]
            if msg.thread_id == 0 or not members:
                members = [msg]
            self._emit(members)

    def _emit(self, members: list[Message]) -> None:
        level: dict[str, int] = {}
        for i, m in enumerate(members):
            if m.pk in self._emitted:
                continue
            parent = level.get(m.in_reply_to)
            d = 0 if i == 0 else (parent + 1 if parent is not None else 1)
            if m.message_id:
                level[m.message_id] = d
            self.depth[m.pk] = d
            self._emitted.add(m.pk)
            self.rows.append(m)

    def depth_of(self, msg: Message) -> int:
        return self.depth.get(msg.pk, 0)


class SearchSource:
    """Search results (newest first), fetched once and paged from memory."""

    def __init__(self, cache: Cache, query: str, account: str | None = None) -> None:
        self.cache = cache
        self.query = query
        self.account = account
        self._rows: list[Message] | None = None

    async def _load(self) -> list[Message]:
        if self._rows is None:
            self._rows = await self.cache.search(self.query, SEARCH_LIMIT, account=self.account)
        return self._rows

    async def count(self) -> int:
        return len(await self._load())

    async def page(self, offset: int, limit: int) -> Sequence[Message]:
        return (await self._load())[offset : offset + limit]

    def depth_of(self, msg: Message) -> int:
        return 0


class EmptySource:
    async def count(self) -> int:
        return 0

    async def page(self, offset: int, limit: int) -> Sequence[Message]:
        return []

    def depth_of(self, msg: Message) -> int:
        return 0
