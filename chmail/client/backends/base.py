"""What every mail store looks like to the sync engine: a typing.Protocol and its data.

IMAP and Maildir implement ``Backend``; POP3 is fetch-only (``pop3.Pop3Fetcher``) and the
sync engine treats it separately. Folder names are the store's own (IMAP mailbox names,
``/``-separated Maildir++ folders); UIDs are the store's own (IMAP UIDs; Maildir keeps a
UID map of its own, see maildir.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Protocol

from chmail.client.cache_models import Batch

# Which special-use attribute (RFC 6154) maps to which folder role.
SPECIAL_USE_FLAGS = {
    "\\sent": "sent",
    "\\drafts": "drafts",
    "\\trash": "trash",
    "\\junk": "junk",
    "\\archive": "archive",
    "\\flagged": "flagged",
    "\\all": "all",
}
# Names that mean a role when the server does not say (many servers, and Maildirs).
ROLE_BY_NAME = {
    "inbox": "inbox",
    "sent": "sent",
    "sent items": "sent",
    "sent messages": "sent",
    "drafts": "drafts",
    "trash": "trash",
    "deleted items": "trash",
    "junk": "junk",
    "spam": "junk",
    "archive": "archive",
}


@dataclass(frozen=True)
class FolderInfo:
    name: str
    delimiter: str = "/"
    special_use: str = ""  # "", "inbox", "sent", "drafts", "trash", "junk", "archive", ...
    selectable: bool = True


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int
    uidnext: int = 0
    exists: int = 0
    highestmodseq: int = 0  # 0: the store has no CONDSTORE


def role_of(name: str, attributes: Iterable[str] = ()) -> str:
    for attr in attributes:
        role = SPECIAL_USE_FLAGS.get(attr.lower())
        if role:
            return role
    leaf = name.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return ROLE_BY_NAME.get(name.lower(), ROLE_BY_NAME.get(leaf.lower(), ""))


class Backend(Protocol):
    """A mail store the sync engine can mirror. Every method raises MailError (or its
    subclass ConnectionLost when the link dropped) and nothing else."""

    kind: str
    account: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def folders(self) -> list[FolderInfo]: ...

    async def state(self, folder: str) -> FolderState: ...

    async def uids(self, folder: str) -> list[int]:
        """Every UID in the folder, ascending."""
        ...

    def headers(self, folder: str, uids: list[int] | None) -> AsyncGenerator[Batch, None]:
        """Headers and flags of ``uids`` (None: of every message), in batches: lists of
        messages, or staged batches (``StagedBatch``) that the cache reads as they are."""
        ...

    async def flags(self, folder: str, since_modseq: int = 0) -> dict[int, frozenset[str]]:
        """Flags of every message (or only of those changed since ``since_modseq``)."""
        ...

    async def body(self, folder: str, uid: int) -> bytes:
        """The raw source of one message."""
        ...

    async def store_flags(
        self, folder: str, uids: list[int], add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None: ...

    async def move(self, folder: str, uids: list[int], dest: str) -> dict[int, int]:
        """Move; returns old UID -> new UID where the store says (UIDPLUS)."""
        ...

    async def copy(self, folder: str, uids: list[int], dest: str) -> dict[int, int]: ...

    async def expunge(self, folder: str, uids: list[int]) -> None:
        """Delete for good (IMAP: \\Deleted + UID EXPUNGE)."""
        ...

    async def append(
        self, folder: str, raw: bytes, flags: Iterable[str] = (), date: float | None = None
    ) -> int | None:
        """Store a message; returns its UID when known."""
        ...

    async def find_message_id(self, folder: str, message_id: str) -> list[int]:
        """UIDs of the messages whose Message-ID is ``message_id`` (``<...>``), ascending:
        how an APPEND's UID is found when the store does not say it (no UIDPLUS)."""
        ...

    async def wait_changes(self, folder: str, seconds: float) -> bool:
        """Block until the folder changes (IMAP IDLE) or ``seconds`` pass; True if it changed."""
        ...
