"""Plain data the cache takes and returns (no SQL, no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

# Flags as IMAP names them (RFC 3501 2.3.2); Maildir and POP3 map onto these.
SEEN = "\\Seen"
FLAGGED = "\\Flagged"
ANSWERED = "\\Answered"
DELETED = "\\Deleted"
DRAFT = "\\Draft"

# Special-use folder roles (RFC 6154), lower-case without the backslash.
SPECIAL_USES = ("inbox", "sent", "drafts", "trash", "junk", "archive", "flagged", "all")

SORTS = {
    # name -> (ORDER BY clause on the index of that sort)
    "date-desc": "date DESC, id DESC",
    "date-asc": "date ASC, id ASC",
    "from-asc": "sort_from ASC, date ASC, id ASC",
    "from-desc": "sort_from DESC, date DESC, id DESC",
    "subject-asc": "sort_subject ASC, date ASC, id ASC",
    "subject-desc": "sort_subject DESC, date DESC, id DESC",
    "size-asc": "size ASC, id ASC",
    "size-desc": "size DESC, id DESC",
}


@dataclass(frozen=True)
class Folder:
    id: int
    account: str
    name: str
    delimiter: str
    special_use: str  # "" or one of SPECIAL_USES
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    total: int
    unread: int


@dataclass(slots=True)
class NewMessage:
    """What a backend hands the cache for one message (headers only)."""

    uid: int
    message_id: str = ""
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    from_name: str = ""
    from_addr: str = ""
    to: str = ""  # decoded, comma separated "Name <a@b>"
    cc: str = ""
    subject: str = ""
    date: int = 0
    flags: tuple[str, ...] = ()
    size: int = 0
    ch_headers: list[tuple[str, str]] = field(default_factory=list)
    addresses: list[tuple[str, str]] = field(default_factory=list)  # (name, addr) seen


@dataclass(frozen=True, slots=True)
class StagedBatch:
    """Synced headers already in the cache's row shape: ``image`` is a serialized SQLite
    database (``cache_stage.image``) that the parse helper made, so the event loop binds
    nothing and the cache's thread moves the rows in with one statement. ``messages()``
    parses the same batch again, here: what the cache stores if the image is unreadable."""

    image: bytes
    count: int
    messages: Callable[[], list[NewMessage]]


# What a backend's header sync yields: parsed messages, or a staged batch of them.
Batch = Sequence[NewMessage] | StagedBatch


def flags_text(flags: Iterable[str]) -> str:
    """Flags as the cache stores them: sorted, space-separated, without ``\\Recent``."""
    if not flags:
        return ""
    return " ".join(sorted({f for f in flags if f and f != "\\Recent"}))


@dataclass(frozen=True)
class Message:
    """One cached message, as the TUI and CLI see it."""

    pk: int
    account: str
    folder_id: int
    folder: str
    uid: int
    uidvalidity: int
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    thread_id: int
    from_name: str
    from_addr: str
    to: str
    cc: str
    subject: str
    date: int
    flags: frozenset[str]
    size: int
    has_ch: bool
    ch_headers: tuple[tuple[str, str], ...]
    has_body: bool
    attachments: int

    @property
    def seen(self) -> bool:
        return SEEN in self.flags

    @property
    def flagged(self) -> bool:
        return FLAGGED in self.flags

    @property
    def answered(self) -> bool:
        return ANSWERED in self.flags

    @property
    def sender(self) -> str:
        return self.from_name or self.from_addr


@dataclass(frozen=True)
class Address:
    address: str
    name: str
    uses: int

    def display(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


@dataclass(frozen=True)
class PendingOp:
    id: int
    account: str
    kind: str  # "flags", "move", "copy", "delete"
    folder: str
    uid: int
    arg: str
