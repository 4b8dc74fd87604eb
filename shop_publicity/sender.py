"""Sending a campaign: per-recipient mail over pooled SMTP, resumable, never twice.

The rules, and why:

* Recipients are fixed when the send starts: the segment is snapshotted into the
  ``recipients`` table in the same transaction that marks the campaign sending.
* One row moves ``pending -> sending -> sent | failed`` (or back to ``pending`` with a
  later ``next_at`` for a retry; ``skipped`` when the member withdrew consent first).
* Rows are claimed before their turn: the feeder leases each row's X-CH headers and
  commits the row as ``sending`` (with those headers), a pool's worth of rows per
  commit, and only then hands the rows to the connections, which never wait for the
  database before DATA. A row is marked ``sent`` as soon as the server accepts the
  DATA (committed with the next claim, a few mails later). So after a crash:
  - ``pending`` rows were never offered to the server's DATA: sending them is safe;
  - ``sent`` rows were accepted: they are never sent again;
  - ``sending`` rows are the only uncertain ones: claimed, and maybe offered; the
    process died before committing the server's answer. The server may or may not
    have taken the mail. They are resent (``resend_uncertain``, the default, because
    losing a recipient is the failure listmonk #2273 shows) with the *same* Message-ID
    and the same X-CH headers, so it is the same message, which receivers that
    de-duplicate by Message-ID show once; ``uncertain`` counts them and ``campaign
    status`` reports it. The count is an upper bound: it includes claimed rows whose
    turn had not come (for them the resend is the first delivery). With
    ``resend_uncertain = false`` they are marked failed instead (at most once).
  - A pause or stop puts claimed rows whose turn had not come back to ``pending``.
  This window (end of DATA to the commit of its answer) is the residual risk of any
  SMTP sender: SMTP has no way to ask a server whether it has a message (RFC 5321
  section 6.1 accepts duplicates as the price of not losing mail).
* 4xx replies and dropped connections: retried with exponential backoff, up to
  ``max_attempts``; 5xx: failed at once, with the server's own words.
* The per-second and per-window rates are shared by all pooled connections.
* Consent is checked again when a row's turn comes; an unsubscribe during a send
  skips the member.
* Past ``error_threshold`` (share of failed attempts among the last 100) the campaign
  pauses itself; ``campaign pause`` from another process is seen within half a second.
* Only one sender per campaign at a time (a lock file), so a resume never steals the
  rows another live sender has in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parseaddr

import aiosmtplib

from chmail.config import ShopConfig
from chmail.errors import ChmailError, ShopError
from chmail.headers import ChatLink
from shop_publicity import campaigns
from shop_publicity import compose as c
from shop_publicity import models as m
from shop_publicity import smtp_conn as sm
from shop_publicity.commit import Committer
from shop_publicity.ratelimit import ErrorGauge, RateLimiter, backoff
from shop_publicity.store import Store
from shop_publicity.templates import TemplateError, compile_templates

log = logging.getLogger(__name__)

# alloc(message_id, recipients, context) -> the signed link for that one mail
Allocate = Callable[[str, list[str], str], Awaitable[ChatLink]]
Progress = Callable[["SendResult"], None]


@dataclass
class SendResult:
    campaign: int
    total: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    uncertain: int = 0
    status: str = m.RUNNING
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    sent_now: int = 0  # mailed by this run (the rest were done before a resume)

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def rate(self) -> float:
        spent = time.monotonic() - self.started
        return self.sent_now / spent if spent > 0 else 0.0


def _header_lines(block: str) -> list[tuple[str, str]]:
    out = []
    for line in block.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out.append((name, value))
    return out


class Sender:
    def __init__(
        self,
        store: Store,
        cfg: ShopConfig,
        cid: int,
        *,
        password: str = "",
        allocate: Allocate | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.cid = cid
        self.password = password
        self.allocate = allocate
        self.progress = progress
        self.stop_reason = ""
        self.auto_paused = False
        self.gauge = ErrorGauge(cfg.error_threshold, 100, cfg.error_min_sample)
        self.result = SendResult(cid)
        self.committer = Committer(store)

    # ------------------------------------------------------------------ the run

    async def run(self) -> SendResult:
        camp = await campaigns.get(self.store, self.cid)
        if camp.status == m.DONE:
            raise ShopError(f"Campaign {self.cid} has already been sent.")
        if camp.status == m.DRAFT:
            await self._snapshot(camp)
        elif camp.status == m.PAUSED:
            await self.store.set_status(self.cid, m.RUNNING)
        self.camp = await campaigns.get(self.store, self.cid)
        self.product = await self.store.product(camp.sku) if camp.sku else None
        self.key = await campaigns.shop_key(self.store)
        self.ctx = campaigns.ch_context(self.camp)
        self.envelope_from = parseaddr(self.camp.from_addr)[1] or self.camp.from_addr
        self.tpls = compile_templates(camp.subject_tpl, camp.body_tpl)
        found = await self.store.recover_sending(self.cid)
        if found:
            log.warning("campaign %s: %d mails were cut off mid-send by a crash", self.cid, found)
            self.result.uncertain = found
            if not self.cfg.resend_uncertain:
                await self._give_up_uncertain()
        counts = await self.store.counts(self.cid)
        r = self.result
        r.total = sum(counts.values())
        r.sent, r.failed, r.skipped = counts[m.SENT], counts[m.FAILED], counts[m.SKIPPED]
        earlier: list[float] = []
        if self.cfg.rate_window_max > 0:
            since = time.time() - self.cfg.rate_window_seconds
            earlier = [since] * await self.store.sent_since(since)
        self.limiter = RateLimiter(
            self.cfg.rate_per_second,
            self.cfg.rate_window_max,
            self.cfg.rate_window_seconds,
            earlier,
        )
        self.limited = self.cfg.rate_per_second > 0 or self.cfg.rate_window_max > 0
        self.committer.start()
        watcher = asyncio.create_task(self._watch_pause())
        try:
            await self._loop()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.committer.stop()
        if self.committer.failed is not None:
            raise self.committer.failed
        if self.auto_paused:
            await self.store.set_status(self.cid, m.PAUSED, self.stop_reason)
        if self.stop_reason:
            status, reason = await self.store.campaign_status(self.cid)
            r.status, r.reason = status, reason
        else:
            counts = await self.store.counts(self.cid)
            if counts[m.PENDING] == 0 and counts[m.SENDING] == 0:
                await self.store.set_status(self.cid, m.DONE)
                r.status = m.DONE
        self._tick(force=True)
        return r

    async def _snapshot(self, camp: m.Campaign) -> None:
        domain = c.domain_of(camp.from_addr)
        rows = [
            (mid, email, c.message_id(camp.secret, camp.id, mid, domain))
            for mid, email in await self.store.segment_member_ids(camp.segment)
        ]
        await self.store.start_send(camp.id, rows)

    async def _give_up_uncertain(self) -> None:
        # Only reached with resend_uncertain = false: at most once, never twice.
        now = time.time()
        rows = await self.store.due(self.cid, float("inf"), 1_000_000)
        await self.store.apply(
            [
                m.Outcome(
                    self.cid,
                    rec.member.id,
                    m.FAILED,
                    now,
                    error="cut off mid-send by a crash; may have been delivered",
                )
                for rec in rows
                if rec.uncertain
            ]
        )

    async def _watch_pause(self) -> None:
        while not self.stop_reason:
            await asyncio.sleep(0.5)
            status, reason = await self.store.campaign_status(self.cid)
            if status == m.PAUSED:
                self.stop_reason = reason or "paused"

    async def _loop(self) -> None:
        size = max(1, self.cfg.pool_size)
        # Claimed rows wait here for a connection: two per connection keeps every
        # connection busy while the next claim commits, and bounds the rows a crash
        # leaves claimed but never offered.
        queue: asyncio.Queue[m.Recipient | None] = asyncio.Queue(maxsize=size * 2)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(size)]
        try:
            while not self.stop_reason:
                after = 0
                while not self.stop_reason:
                    batch = await self.store.due(self.cid, time.time(), 256, after)
                    if not batch:
                        break
                    after = batch[-1].member.id
                    for i in range(0, len(batch), size):
                        if self.stop_reason:
                            break
                        claimed = await self._claim(batch[i : i + size])
                        for n, rec in enumerate(claimed):
                            if self.stop_reason:
                                self._release(claimed[n:])
                                break
                            await queue.put(rec)
                await queue.join()
                # Outcomes are posted, not awaited: read the table only once they are in
                # it, or a retry still uncommitted would look like nothing left to do.
                await self.committer.flush()
                if self.stop_reason:
                    break
                nxt = await self.store.next_due_at(self.cid)
                if nxt is None:
                    break
                await asyncio.sleep(min(max(0.0, nxt - time.time()), 1.0))
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers, return_exceptions=True)

    async def _claim(self, recs: list[m.Recipient]) -> list[m.Recipient]:
        """Lease the rows' X-CH headers and commit them as 'sending'; the rows to send.

        One commit for the lot (it also carries every outcome posted since the last
        one). Members who withdrew consent are skipped; a failed lease is retried later.
        """
        mailable = []
        for rec in recs:
            if rec.member.mailable:
                mailable.append(rec)
            else:
                self.result.skipped += 1
                self.committer.post(m.Outcome(self.cid, rec.member.id, m.SKIPPED, time.time()))
                self._tick()
        leased: list[str | sm.Retry]
        if self.allocate is None:  # no CH server: nothing to lease, no tasks to make
            leased = [rec.ch_headers for rec in mailable]
        else:
            leased = list(await asyncio.gather(*(self._lease(rec) for rec in mailable)))
        ready: list[m.Recipient] = []
        last: asyncio.Future[None] | None = None
        for rec, got in zip(mailable, leased, strict=True):
            if isinstance(got, sm.Retry):
                await self._retry(rec, str(got))
                continue
            if got != rec.ch_headers:
                rec = dataclasses.replace(rec, ch_headers=got)
            last = self.committer.post(
                m.Outcome(self.cid, rec.member.id, m.SENDING, time.time(), ch_headers=got)
            )
            ready.append(rec)
        if last is not None:
            await self.committer.sync(last)
        return ready

    def _release(self, recs: list[m.Recipient]) -> None:
        now = time.time()
        for rec in recs:
            self.committer.post(m.Outcome(self.cid, rec.member.id, m.RELEASE, now))

    # ------------------------------------------------------------------ one connection

    async def _worker(self, queue: asyncio.Queue[m.Recipient | None]) -> None:
        smtp = sm.client(self.cfg, self.password)
        try:
            while True:
                rec = await queue.get()
                try:
                    if rec is None:
                        return
                    if self.committer.failed is not None and not self.stop_reason:
                        self.stop_reason = "the status table could not be written"
                    if self.stop_reason:
                        self._release([rec])  # back to pending; a resume takes it
                        continue
                    await self._one(smtp, rec)
                finally:
                    queue.task_done()
        finally:
            if smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit()

    async def _one(self, smtp: aiosmtplib.SMTP, rec: m.Recipient) -> None:
        """Send one claimed row (committed 'sending' with its X-CH headers)."""
        try:
            mail = campaigns.render_for(
                self.camp,
                self.product,
                rec.member,
                self.cfg,
                self.key,
                extra=_header_lines(rec.ch_headers),
                msg_id=rec.message_id,
                tpls=self.tpls,
            )
            if self.limited:  # no per-mail lock and clock reads when there is no limit
                await self.limiter.acquire()
            await sm.deliver(
                smtp, self.cfg.smtp_host, self.envelope_from, rec.member.email, mail.raw
            )
        except sm.Retry as exc:
            await self._retry(rec, str(exc))
        except (sm.Fail, TemplateError) as exc:
            await self._finish(rec, m.FAILED, str(exc))
        else:
            await self._finish(rec, m.SENT)

    async def _lease(self, rec: m.Recipient) -> str | sm.Retry:
        """The row's X-CH header lines (kept from an earlier claim, or leased now)."""
        if rec.ch_headers or self.allocate is None:
            return rec.ch_headers
        try:
            link = await self.allocate(rec.message_id, [rec.member.email], self.ctx)
        except ChmailError as exc:
            return sm.Retry(f"the CH server gave no chat port: {exc}")
        return "\n".join(f"{k}: {v}" for k, v in link.headers())

    async def _retry(self, rec: m.Recipient, why: str) -> None:
        # rows reach here either before DATA (attempts not counted yet) or after.
        attempts = rec.attempts + 1
        self.gauge.record(False)
        if attempts >= self.cfg.max_attempts:
            await self._finish(
                rec, m.FAILED, f"gave up after {attempts} attempts: {why}", counted=False
            )
            return
        self.result.retried += 1
        wait = backoff(attempts, self.cfg.retry_base, self.cfg.retry_max)
        log.info(
            "campaign %s: %s will be retried in %.1fs: %s", self.cid, rec.message_id, wait, why
        )
        self.committer.post(
            m.Outcome(
                self.cid,
                rec.member.id,
                m.PENDING,
                time.time(),
                error=why,
                next_at=time.time() + wait,
                attempts_inc=1,
            )
        )
        self._check_gauge(why)

    async def _finish(
        self, rec: m.Recipient, status: str, why: str = "", counted: bool = True
    ) -> None:
        if counted:
            self.gauge.record(status == m.SENT)
        if status == m.SENT:
            self.result.sent += 1
            self.result.sent_now += 1
        else:
            self.result.failed += 1
        # Not awaited: the connection moves on to the next mail; the feeder's next claim
        # commits it (FIFO), a few mails later. Committer.stop() flushes.
        self.committer.post(
            m.Outcome(self.cid, rec.member.id, status, time.time(), error=why, attempts_inc=1)
        )
        self._check_gauge(why)
        self._tick()

    def _check_gauge(self, why: str) -> None:
        if not self.stop_reason and self.gauge.tripped():
            n = len(self.gauge.results)
            self.stop_reason = (
                f"paused itself: {self.gauge.errors} of the last {n} attempts failed (last: {why})"
            )
            self.auto_paused = True

    def _tick(self, force: bool = False) -> None:
        if self.progress is not None:
            self.progress(self.result)
