"""What the TUI needs from the engines underneath it, as small typed interfaces.

The screens talk only to these; ``engines.py`` implements them over the real cache,
backends, outbox, CH link and chat engine, and tests use the same real implementation.
Keeping the seam here means a screen never imports a backend or a socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chmail.client.cache_models import Address, Folder, Message
from chmail.client.tui.widgets.message_list import RowSource


@dataclass
class Draft:
    """A mail being written. ``draft_id`` is set once it has been saved."""

    account: str
    to: str = ""
    cc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    draft_id: int | None = None
    attachments: tuple[str, ...] = field(default_factory=tuple)


Progress = Callable[[str], None]


class MailApi(Protocol):
    """Mail: folders, rows, bodies, flags, moves, drafts, sending, sync."""

    def account_names(self) -> list[str]: ...

    def email_of(self, account: str) -> str: ...

    async def folders(self, account: str) -> list[Folder]: ...

    def folder_rows(self, account: str, folder: str, sort: str, threaded: bool) -> RowSource: ...

    def search_rows(self, account: str, query: str) -> RowSource: ...

    async def raw(self, msg: Message) -> bytes: ...

    async def set_flag(self, msg: Message, flag: str, on: bool) -> None: ...

    async def move(self, msg: Message, folder: str) -> Message | None: ...

    async def trash_folder(self, account: str) -> str: ...

    async def addresses(self, prefix: str, limit: int = 8) -> list[Address]: ...

    async def save_draft(self, draft: Draft) -> int: ...

    async def delete_draft(self, account: str, draft_id: int) -> None: ...

    async def drafts(self, account: str) -> list[Draft]: ...

    async def send(self, draft: Draft) -> str: ...

    async def sync(self, account: str, progress: Progress) -> None: ...

    def start_live(self, on_change: Callable[[], None]) -> None: ...

    def state(self) -> tuple[str, str]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Ring:
    """Someone is calling: ``caller`` about the mail ``subject`` (session ``session``)."""

    session: str
    caller: str
    subject: str
    port: int = 0
    context: str = ""


@dataclass(frozen=True)
class ChatLine:
    session: str
    seq: int
    sender: str
    text: str
    ts: float
    mine: bool = False
    cid: str = ""


@dataclass(frozen=True)
class AlarmItem:
    id: str
    caller: str
    subject: str
    ts: float
    port: int = 0
    kind: str = "missed"


@dataclass(frozen=True)
class QueueItem:
    session: str
    member: str
    campaign: str
    product: str
    waiting_s: float
    taken_by: str = ""


class ChatEvents(Protocol):
    """What the chat engine tells the TUI (called on the app's event loop)."""

    def on_ring(self, ring: Ring) -> None: ...

    def on_ring_gone(self, session: str, reason: str) -> None: ...

    def on_chat_open(self, session: str, peer: str, subject: str) -> None: ...

    def on_line(self, line: ChatLine) -> None: ...

    def on_typing(self, session: str, who: str) -> None: ...

    def on_read(self, session: str, who: str, seq: int) -> None: ...

    def on_ended(self, session: str, reason: str) -> None: ...

    def on_call_moved(self, old: str, new: str, state: str) -> None:
        """An outgoing campaign chat goes on as call ``new`` (queued, then placed; or
        passed on by an operator who turned it down); ``state`` says how it stands."""

    def on_alarm(self, alarm: AlarmItem) -> None: ...

    def on_presence(self, login: str, online: bool) -> None: ...

    def on_link_state(self, state: str, error: str) -> None: ...


class ChatApi(Protocol):
    """Chat: presence, escalation (S107), rings (S111), lines, alarms (S117), the queue."""

    def login(self) -> str: ...

    async def start(self, events: ChatEvents) -> None: ...

    async def escalate(self, msg: Message) -> str: ...

    async def accept(self, session: str) -> None: ...

    async def decline(self, session: str) -> None: ...

    async def say(self, session: str, text: str) -> None: ...

    async def typing(self, session: str) -> None: ...

    async def mark_read(self, session: str, seq: int) -> None: ...

    async def history(self, session: str) -> Sequence[ChatLine]: ...

    async def leave(self, session: str) -> None: ...

    async def transcript(self, session: str) -> str: ...

    async def alarms(self) -> list[AlarmItem]: ...

    async def call_back(self, alarm: AlarmItem) -> str: ...

    async def watch(self, logins: Sequence[str]) -> set[str]: ...

    async def queue(self) -> list[QueueItem]: ...

    async def take(self, session: str) -> None: ...

    # the operator's keys on a campaign chat (S209-S219)
    def campaign_chat(self, session: str) -> bool: ...

    def canned_replies(self, session: str) -> list[tuple[str, str]]: ...

    async def tag(self, session: str, interests: Sequence[str]) -> None: ...

    def last_campaign(self) -> int | None: ...

    async def dial(self, member: str, campaign: int) -> str: ...

    async def close(self) -> None: ...


Loader = Callable[[], Awaitable[None]]
