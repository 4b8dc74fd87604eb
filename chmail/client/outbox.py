"""The crash-safe outbox: compose -> draft -> outbox row -> CH port -> X-CH stamp -> SMTP ->
Sent folder -> done.

Rules:

* A mail is in SQLite (``outbox``) before anything goes on the wire, so it survives a crash
  or an SMTP outage. Its Message-ID is the idempotency key: queuing it twice is one row, a
  row past SMTP is never sent again. (If chmail dies between the server's 250 and the
  commit of "sent", that one mail is sent again at restart: the RFC 1047 window no SMTP
  client can close.)
* Port allocation (S103) happens once per mail; the stamped bytes are stored, so retries
  reuse the same link. If the CH server cannot be reached the mail goes without X-CH
  headers and the user is told, unless ``[accounts.ch] wait_for_link`` holds it until
  the server answers.
* SMTP 4xx, dropped connections and timeouts are retried with exponential backoff plus
  jitter; a 5xx stops the mail (state ``failed``) with the server's words for the user.
* After SMTP accepted it, the mail is appended to the account's Sent folder (``\\Seen``);
  if that fails it is retried without sending again.
* Drafts of an IMAP account are copied to its Drafts folder in the background
  (chmail/client/drafts.py); a draft sent or discarded loses its copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from chmail import headers
from chmail.client import cache_outbox as store
from chmail.client.backends.base import Backend
from chmail.client.cache import Cache
from chmail.client.cache_outbox import OutboxItem
from chmail.client.compose import compose, stamp
from chmail.client.drafts import DraftMirror
from chmail.config import AccountConfig
from chmail.errors import ChmailError, ConfigError, SendError

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
Notify = Callable[[str, str], None]  # (message_id, sentence for the user)
DRAFT_RETRY = 30.0  # seconds between tries to copy drafts to a server that was unreachable


class PortAllocator(Protocol):
    """What the outbox needs of chmail.client.chlink.ChLink (S103)."""

    async def alloc_port(
        self,
        message_id: str,
        recipients: list[str],
        thread: Iterable[str] = (),
        context: str = "",
    ) -> headers.ChatLink: ...


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str = "starttls"  # tls, starttls, plain (plain only to localhost)
    user: str = ""
    password: str | Callable[[], Awaitable[str]] = ""
    ssl_context: ssl.SSLContext | None = None

    def check(self) -> None:
        if self.security == "plain" and self.host not in LOOPBACK:
            raise ConfigError(
                f'Refusing plain-text SMTP to {self.host}; use security = "starttls" or "tls".'
            )


class Outbox:
    def __init__(
        self,
        cache: Cache,
        account: AccountConfig,
        smtp: SmtpTarget,
        *,
        allocator: PortAllocator | None = None,
        sent_store: Backend | None = None,
        notify: Notify | None = None,
        timeout: float = 60.0,
        alloc_timeout: float = 10.0,
        backoff_base: float = 2.0,
        backoff_max: float = 300.0,
    ) -> None:
        smtp.check()
        self.cache = cache
        self.account = account
        self.smtp = smtp
        self.allocator = allocator
        self.sent_store = sent_store
        self.notify = notify or (lambda mid, text: log.info("%s: %s", mid, text))
        self.timeout = timeout
        self.alloc_timeout = alloc_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._kick = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.draft_copies = (
            DraftMirror(cache, account, sent_store)
            if sent_store is not None and sent_store.kind == "imap"
            else None
        )

    # ------------------------------------------------------------ composing

    async def send(
        self,
        *,
        to: Sequence[str],
        cc: Sequence[str] = (),
        bcc: Sequence[str] = (),
        subject: str,
        body: str,
        in_reply_to: str | None = None,
        references: Sequence[str] = (),
        attachments: Sequence[str | Path] = (),
        message_id: str | None = None,
    ) -> str:
        """Compose and queue a mail (a draft is kept until it is queued); returns its
        Message-ID. The worker (``run``) or ``flush()`` sends it."""
        fields = {"to": list(to), "cc": list(cc), "bcc": list(bcc), "subject": subject,
                  "body": body, "in_reply_to": in_reply_to or "", "references": list(references),
                  "attachments": [str(a) for a in attachments]}  # fmt: skip
        composed = compose(
            sender=self.account.email,
            sender_name=self.account.display_name,
            to=to, cc=cc, bcc=bcc, subject=subject, body=body, in_reply_to=in_reply_to,
            references=references, attachments=attachments, message_id=message_id,
        )  # fmt: skip
        draft_id = await store.save_draft(
            self.cache, self.account.name, composed.message_id, fields, None
        )
        await store.enqueue(
            self.cache, self.account.name, composed.message_id, composed.sender,
            composed.recipients, composed.raw,
        )  # fmt: skip
        await store.delete_draft(self.cache, draft_id)
        await self.cache.note_sent([("", a) for a in composed.recipients])
        self._kick.set()
        return composed.message_id

    async def queue_raw(self, raw: bytes, message_id: str, recipients: list[str]) -> OutboxItem:
        """Queue an already built mail (tests, scripts)."""
        item = await store.enqueue(
            self.cache, self.account.name, message_id, self.account.email, recipients, raw
        )
        self._kick.set()
        return item

    async def save_draft(self, draft: Any) -> int:
        """Save a draft (any object with account/to/cc/subject/body/... attributes)."""
        fields = {k: getattr(draft, k, "") for k in
                  ("to", "cc", "subject", "body", "in_reply_to")}  # fmt: skip
        fields["references"] = list(getattr(draft, "references", ()))
        fields["attachments"] = list(getattr(draft, "attachments", ()))
        draft_id = getattr(draft, "draft_id", None)
        mid = f"<draft-{time.time_ns()}@chmail>"
        saved = await store.save_draft(self.cache, self.account.name, mid, fields, draft_id)
        if self.draft_copies is not None:
            self.draft_copies.push_soon()  # the server copy follows; saved locally already
        return saved

    async def delete_draft(self, draft_id: int) -> None:
        """Drop a draft (sent or discarded), and its copy on the server."""
        if self.draft_copies is None:
            await store.delete_draft(self.cache, draft_id)
            return
        await self.draft_copies.forget(draft_id, lambda: store.delete_draft(self.cache, draft_id))

    async def drafts(self) -> list[store.StoredDraft]:
        return await store.drafts(self.cache, self.account.name)

    async def status(self, message_id: str) -> OutboxItem | None:
        return await store.get(self.cache, message_id)

    async def items(self) -> list[OutboxItem]:
        return await store.items(self.cache, self.account.name)

    # ------------------------------------------------------------ sending

    async def run(self, stop: asyncio.Event) -> None:
        """Send whatever is due, then sleep until the next retry or a new mail."""
        while not stop.is_set():
            await self.flush()
            nxt = await store.next_due(self.cache, self.account.name)
            delay = 3600.0 if nxt is None else max(0.05, nxt - time.time())
            if self.draft_copies is not None and await self.draft_copies.dirty():  # server was away
                self.draft_copies.push_soon()
                delay = min(delay, DRAFT_RETRY)
            self._kick.clear()
            waits = [asyncio.ensure_future(self._kick.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def flush(self) -> int:
        """Try every due mail once; returns how many reached a final state."""
        async with self._flush_lock:
            finished = 0
            client: aiosmtplib.SMTP | None = None
            try:
                for item in await store.due(self.cache, self.account.name, time.time(), 500):
                    if item.state in (store.QUEUED, store.SENDING):
                        ready = await self._stamp(item)
                        if ready is None:
                            continue
                        client, ok = await self._smtp(client, ready)
                        if not ok:
                            continue
                        if self.sent_store is None:  # _smtp already marked it done
                            finished += 1
                            continue
                        item = ready
                    if await self._file(item):
                        finished += 1
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.quit()
            return finished

    async def _stamp(self, item: OutboxItem) -> OutboxItem | None:
        """Allocate a port and stamp (once). None: wait for the CH server (wait_for_link)."""
        if (
            item.stamped is not None
            or item.ch_status
            or self.allocator is None
            or not self.account.ch.server
        ):
            return item
        try:
            link = await asyncio.wait_for(
                self.allocator.alloc_port(item.message_id, item.recipients), self.alloc_timeout
            )
            stamped = stamp(item.raw, link)
        except (ChmailError, TimeoutError, OSError) as exc:
            if self.account.ch.wait_for_link:
                await self._retry(item, f"waiting for the CH server: {exc}")
                return None
            await store.update(self.cache, item.id, ch_status="unlinked")
            self.notify(
                item.message_id,
                f"The CH server could not be reached ({exc}); the mail is sent without a chat "
                "link. Set [accounts.ch] wait_for_link = true to hold mail until it answers.",
            )
            return await store.get(self.cache, item.message_id)
        await store.update(self.cache, item.id, stamped=stamped, ch_status="stamped")
        return await store.get(self.cache, item.message_id)

    async def _connect(self) -> aiosmtplib.SMTP:
        t = self.smtp
        ctx = t.ssl_context or ssl.create_default_context()
        client = aiosmtplib.SMTP(
            hostname=t.host, port=t.port, timeout=self.timeout,
            use_tls=t.security == "tls", start_tls=t.security == "starttls",
            tls_context=ctx if t.security != "plain" else None,
        )  # fmt: skip
        await client.connect()
        if t.user:
            pw = t.password if isinstance(t.password, str) else await t.password()
            await client.login(t.user, pw)
        return client

    async def _smtp(
        self, client: aiosmtplib.SMTP | None, item: OutboxItem
    ) -> tuple[aiosmtplib.SMTP | None, bool]:
        """One SMTP transaction. Returns the (reusable) client and whether it was accepted."""
        # No "sending" write before the transaction: a crash before the final write leaves
        # the row queued and it is sent again once, exactly as a "sending" mark would.
        try:
            if client is None or not client.is_connected:
                client = await self._connect()
            errors, _ = await client.sendmail(item.sender, item.recipients, item.data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            with contextlib.suppress(Exception):
                if client is not None:
                    await client.rset()
            if any(r.code < 500 for r in exc.recipients):
                await self._retry(item, f"recipients deferred: {refused}")
            else:
                await self._fail(item, f"Every recipient was refused: {refused}")
            return client, False
        except aiosmtplib.SMTPResponseException as exc:
            with contextlib.suppress(Exception):
                if client is not None:
                    await client.rset()
            if exc.code >= 500:
                await self._fail(
                    item, f"The mail server refused the mail: {exc.code} {exc.message}"
                )
            else:
                await self._retry(item, f"{exc.code} {exc.message}")
            return client, False
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            if client is not None:
                client.close()
            await self._retry(item, f"{type(exc).__name__}: {exc}")
            return None, False
        attempts = item.attempts + 1
        deferred = {r: resp for r, resp in errors.items() if resp[0] < 500}
        if deferred:  # the others took it: retry the deferred recipients on their own
            await self._defer_some(item, deferred, errors)
            return client, False
        if self.sent_store is not None:  # filing into Sent still to do
            await store.update(
                self.cache, item.id, state=store.SENT, attempts=attempts, last_error=""
            )
        else:
            await store.update(
                self.cache, item.id, state=store.DONE, attempts=attempts, last_error=""
            )
        if errors:
            text = "; ".join(f"{r}: {c} {m}" for r, (c, m) in errors.items())
            self.notify(item.message_id, f"Sent, but some recipients were refused: {text}")
        return client, True

    async def _defer_some(
        self, item: OutboxItem, deferred: dict[str, Any], errors: dict[str, Any]
    ) -> None:
        """Some recipients took the mail, others answered 4xx: file it in Sent now (once),
        keep only the deferred recipients on the row and retry them with backoff; 5xx
        refusals among the others are told to the user, never retried."""
        refused = {r: resp for r, resp in errors.items() if r not in deferred}
        if refused:
            text = "; ".join(f"{r}: {c} {m}" for r, (c, m) in refused.items())
            self.notify(item.message_id, f"Sent, but some recipients were refused: {text}")
        filed = item.filed
        if self.sent_store is not None and not filed:
            try:
                await self.sent_store.append(await self._sent_folder(), item.data, flags=["\\Seen"])
                filed = True
            except ChmailError as exc:  # filed with the last recipient instead
                log.info("filing %s in Sent failed, will retry: %s", item.message_id, exc)
        await store.update(self.cache, item.id, recipients=list(deferred), filed=int(filed))
        text = "; ".join(f"{r}: {c} {m}" for r, (c, m) in deferred.items())
        await self._retry(item, f"recipients deferred: {text}")

    async def _file(self, item: OutboxItem) -> bool:
        """Append to Sent (if there is a store and it is not there yet), then done."""
        if self.sent_store is None or item.filed:
            if item.state != store.DONE:
                await store.update(self.cache, item.id, state=store.DONE)
            return True
        if self.sent_store is not None:
            try:
                sent = await self._sent_folder()
                await self.sent_store.append(sent, item.data, flags=["\\Seen"])
            except ChmailError as exc:
                log.info("filing %s in Sent failed, will retry: %s", item.message_id, exc)
                retry_at = time.time() + self.backoff_base
                await store.update(
                    self.cache, item.id, state=store.SENT, next_try=retry_at, last_error=str(exc)
                )
                return False
        await store.update(self.cache, item.id, state=store.DONE)
        return True

    async def _sent_folder(self) -> str:
        f = await self.cache.folder_by_use(self.account.name, "sent")
        return f.name if f is not None else "Sent"

    async def _retry(self, item: OutboxItem, reason: str) -> None:
        n = item.attempts + 1
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(n - 1, 16))
        delay *= 0.5 + random.random()  # jitter
        log.info("outbox %s: %s; retry %d in %.1f s", item.message_id, reason, n, delay)
        await store.update(self.cache, item.id, state=store.QUEUED, attempts=n,
                           next_try=time.time() + delay, last_error=reason)  # fmt: skip

    async def _fail(self, item: OutboxItem, reason: str) -> None:
        await store.update(
            self.cache, item.id, state=store.FAILED, attempts=item.attempts + 1, last_error=reason
        )
        self.notify(item.message_id, reason)


def smtp_target(
    acc: AccountConfig, password: str | Callable[[], Awaitable[str]] = ""
) -> SmtpTarget:
    ep = acc.smtp
    if not ep.host:
        raise SendError(f"Account {acc.name!r} has no SMTP server ([accounts.smtp] host).")
    from chmail.client.accounts import port_of, ssl_context

    return SmtpTarget(
        host=ep.host, port=port_of("smtp", ep), security=ep.security, user=ep.user,
        password=password, ssl_context=ssl_context(ep) if ep.security != "plain" else None,
    )  # fmt: skip
