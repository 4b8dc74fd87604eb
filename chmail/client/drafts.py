"""Drafts mirrored to the server's Drafts folder (IMAP accounts).

Rules:

* A draft is saved locally at once (cache_outbox); its copy on the server follows in the
  background: the new version is APPENDed to the special-use Drafts folder (RFC 6154)
  with ``\\Draft``, then the previous copy's UID is deleted (``\\Deleted`` + UID EXPUNGE),
  so the server holds one copy per draft, the newest.
* A draft that is sent or discarded loses its server copy too.
* Offline, nothing is lost: a draft stays "dirty" (updated after its last copy) and is
  copied at the next push (the outbox worker retries); a copy that could not be deleted
  is queued in ``pending_ops`` like any other offline deletion, and the sync pushes it.
* Saves come in bursts (autosave): pushes never overlap, and a save during a push makes
  one more push afterwards, not one per save.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

from chmail.client import cache_drafts
from chmail.client.backends.base import Backend
from chmail.client.cache import Cache
from chmail.client.cache_models import DRAFT, SEEN
from chmail.client.compose import compose
from chmail.config import AccountConfig
from chmail.errors import ChmailError, ConnectionLost, ValidationError

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MSGID = re.compile(r"<[!-;=?-~]{1,246}>")


def draft_mime(account: AccountConfig, message_id: str, fields: dict[str, Any]) -> bytes:
    """The draft as a mail. A complete one is built like the mail it will become
    (attachments included); an unfinished one (no or half-typed recipients) keeps what
    was typed, with control characters blanked so nothing reaches a header unchecked."""
    text = {k: str(fields.get(k) or "") for k in ("to", "cc", "subject", "body", "in_reply_to")}
    refs = [str(r) for r in fields.get("references") or ()]
    try:
        return compose(
            sender=account.email, sender_name=account.display_name,
            to=[text["to"]] if text["to"] else [], cc=[text["cc"]] if text["cc"] else [],
            subject=text["subject"], body=text["body"], in_reply_to=text["in_reply_to"] or None,
            references=refs, attachments=[str(a) for a in fields.get("attachments") or ()],
            message_id=message_id,
        ).raw  # fmt: skip
    except ValidationError:
        pass
    msg = EmailMessage(policy=SMTP)
    msg["From"] = account.email
    subject = _CONTROL.sub(" ", text["subject"]).strip()
    if subject:
        msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(time.time(), UTC))
    msg["Message-ID"] = message_id
    if _MSGID.fullmatch(text["in_reply_to"]):
        msg["In-Reply-To"] = text["in_reply_to"]
    msg["MIME-Version"] = "1.0"
    msg["User-Agent"] = "chmail"
    body = text["body"]
    msg.set_content(body if body.endswith("\n") else body + "\n", charset="utf-8", cte="8bit")
    # Recipients as typed, as unstructured text: they may not parse as addresses yet.
    typed = b"".join(
        f"{name}: {_unstructured(_CONTROL.sub(' ', text[key]).strip())}\r\n".encode("ascii")
        for name, key in (("To", "to"), ("Cc", "cc"))
        if text[key].strip()
    )
    return typed + msg.as_bytes()


def _unstructured(value: str) -> str:
    """A header value in ASCII (RFC 2047 encoded words when it is not)."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


class DraftMirror:
    """Keeps the Drafts folder of one account's ``store`` in step with its local drafts."""

    def __init__(self, cache: Cache, account: AccountConfig, store: Backend) -> None:
        self.cache = cache
        self.account = account
        self.store = store
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def push_soon(self) -> asyncio.Task[None]:
        """Push in the background (one push at a time; a call during one adds one more)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._pushes())
        else:
            self._again = True
        return self._task

    async def _pushes(self) -> None:
        while True:
            self._again = False
            try:
                await self.push()
            except ChmailError as exc:
                log.info("%s: drafts not copied to the server yet: %s", self.account.name, exc)
                return
            if not self._again:
                return

    async def dirty(self) -> bool:
        return bool(await cache_drafts.dirty(self.cache, self.account.name))

    async def push(self) -> int:
        """Copy every draft changed since its last copy; returns how many were copied.
        Raises ConnectionLost / MailError when the server cannot take them now."""
        async with self._lock:
            n = 0
            for d in await cache_drafts.dirty(self.cache, self.account.name):
                folder = await self._folder()
                raw = draft_mime(self.account, d.message_id, d.fields)
                uid = await self.store.append(folder, raw, flags=(DRAFT, SEEN))
                stale: list[int] = []
                if uid is None:  # no UIDPLUS: the newest copy with its Message-ID is it
                    found = await self.store.find_message_id(folder, d.message_id)
                    uid, stale = (found[-1], found[:-1]) if found else (None, [])
                if not await cache_drafts.set_copy(self.cache, d.id, folder, uid or 0, d.updated):
                    for old in [*stale, *([uid] if uid else [])]:  # deleted while we copied
                        await self._remove(folder, old)
                    continue
                gone = {(folder, old) for old in stale}  # older copies, by Message-ID
                if d.server_uid and (d.server_folder, d.server_uid) != (folder, uid):
                    gone.add((d.server_folder, d.server_uid))
                for where, old in sorted(gone):
                    await self._remove(where, old)
                n += 1
            return n

    async def forget(self, draft_id: int, delete: Callable[[], Awaitable[None]]) -> None:
        """The draft was sent or discarded: ``await delete()`` drops the local draft, then
        its server copy goes (now, or queued for the next sync when offline)."""
        async with self._lock:
            copy = await cache_drafts.copy_of(self.cache, draft_id)
            await delete()
        if copy is not None:
            await self._remove(*copy)

    async def _remove(self, folder: str, uid: int) -> None:
        cached = await self.cache.folder_by_name(self.account.name, folder)
        if cached is not None:
            await self.cache.remove_uids(cached.id, [uid])
        try:
            await self.store.expunge(folder, [uid])
        except ConnectionLost as exc:
            log.info("draft copy %s/%s deleted at the next sync: %s", folder, uid, exc)
            await self.cache.queue_op(self.account.name, "delete", folder, uid)
        except ChmailError as exc:  # already gone on the server
            log.info("draft copy %s/%s not deleted: %s", folder, uid, exc)

    async def _folder(self) -> str:
        f = await self.cache.folder_by_use(self.account.name, "drafts")
        if f is not None:
            return f.name
        with contextlib.suppress(ChmailError):
            for info in await self.store.folders():
                if info.special_use == "drafts":
                    return info.name
        return "Drafts"
