"""Flag, move and delete with undo: each change records how to take it back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chmail.client.cache_models import FLAGGED, SEEN, Message
from chmail.client.tui.api import MailApi

MAX_UNDO = 50


@dataclass(frozen=True)
class Change:
    what: str  # shown to the user: "Flagged", "Moved to Archive", ...
    undo: Callable[[], Awaitable[None]]


class MailActions:
    """The mail-changing verbs of the main screen, each undoable (last in, first out)."""

    def __init__(self, mail: MailApi) -> None:
        self.mail = mail
        self.history: list[Change] = []

    def _push(self, change: Change) -> str:
        self.history.append(change)
        del self.history[:-MAX_UNDO]
        return change.what

    async def toggle_flag(self, msg: Message) -> str:
        on = FLAGGED not in msg.flags
        await self.mail.set_flag(msg, FLAGGED, on)

        async def undo() -> None:
            await self.mail.set_flag(msg, FLAGGED, not on)

        return self._push(Change("Flagged." if on else "Flag removed.", undo))

    async def toggle_read(self, msg: Message) -> str:
        on = SEEN not in msg.flags
        await self.mail.set_flag(msg, SEEN, on)

        async def undo() -> None:
            await self.mail.set_flag(msg, SEEN, not on)

        return self._push(Change("Marked read." if on else "Marked unread.", undo))

    async def move(self, msg: Message, folder: str, *, verb: str = "Moved") -> str:
        moved = await self.mail.move(msg, folder)

        async def undo() -> None:
            if moved is not None:
                await self.mail.move(moved, msg.folder)

        return self._push(Change(f"{verb} to {folder}. Press u to undo.", undo))

    async def delete(self, msg: Message) -> str:
        trash = await self.mail.trash_folder(msg.account)
        return await self.move(msg, trash, verb="Deleted: moved")

    async def undo(self) -> str:
        if not self.history:
            return "Nothing to undo."
        change = self.history.pop()
        await change.undo()
        return f"Undone: {change.what.split('.')[0].lower()}."
