"""Alarms (S117): a call its callee did not take is remembered and told.

Rules:

* A call that finds its callee offline, or rings unanswered until the ring timeout,
  leaves an alarm for the callee naming the caller, the mail's subject and Message-ID.
* Alarms are pushed (``alarm_list``, the client rings the bell) on the callee's next
  successful login, and at once when the callee is online. A pushed alarm stays listed
  until the user acknowledges it (``alarms`` with ``ack``).
* When the callee was offline, an alarm mail goes to the callee's address through the
  server's SMTP settings (``[server] smtp_host``, ``smtp_port``, ``smtp_from``), in the
  thread of the mail the call was about. A mail the SMTP server did not take is tried
  again after 30 s, 2 min, 10 min, 30 min and 1 h, and at the next start; no SMTP host
  configured means no alarm mail.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib
import aiosqlite

from chmail import protocol as p
from chmail.chserver import chatstore
from chmail.chserver.chatstore import AlarmRow
from chmail.config import ServerConfig

log = logging.getLogger(__name__)

# seconds before each new attempt at an alarm mail the SMTP server did not take
RETRY_DELAYS: tuple[float, ...] = (30.0, 120.0, 600.0, 1800.0, 3600.0)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

Push = Callable[[str, p.Message], int]
Emails = Callable[[str], Awaitable[list[str]]]


def clean_subject(subject: str, limit: int = 200) -> str:
    """A subject quoted by a caller, made safe for a header and a terminal."""
    text = _CONTROL.sub(" ", subject).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def alarm_dict(a: AlarmRow) -> dict[str, Any]:
    return {
        "id": a.id,
        "caller": a.caller,
        "subject": a.subject,
        "message_id": a.message_id,
        "port": a.port,
        "at": a.created_at,
        "seen": a.seen_at is not None,
    }


def alarm_mail(a: AlarmRow, *, to: str, sender: str, domain: str = "localhost") -> EmailMessage:
    """The alarm mail for ``a`` (pure)."""
    msg = EmailMessage()
    about = f" about “{a.subject}”" if a.subject else ""
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"Missed chat: {a.caller} called you{about}"
    msg["Date"] = formatdate(a.created_at, localtime=False)
    msg["Message-ID"] = make_msgid("alarm", domain=domain)
    if a.message_id:
        msg["In-Reply-To"] = a.message_id
        msg["References"] = a.message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-replies to this
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(a.created_at))
    msg.set_content(
        f"{a.caller} wanted to chat with you{about} at {when}, but you were not online.\n\n"
        "Open the mail in chmail and press the chat key to call back, or run\n"
        f"    chmail chat '{a.message_id}'\n"
        if a.message_id
        else f"{a.caller} wanted to chat with you at {when}, but you were not online.\n"
    )
    return msg


class AlarmService:
    """Keeps, pushes and mails alarms."""

    def __init__(
        self, db: aiosqlite.Connection, config: ServerConfig, push: Push, emails: Emails
    ) -> None:
        self.db = db
        self.config = config
        self.push = push
        self.emails = emails
        self._tasks: set[asyncio.Task[None]] = set()
        self.retry_delays = RETRY_DELAYS

    async def raise_alarm(
        self,
        *,
        login: str,
        caller: str,
        call_id: int | None,
        subject: str,
        message_id: str,
        port: int,
        mail: bool,
    ) -> int:
        """Persist an alarm; push it now if ``login`` is online; mail it if asked."""
        now = time.time()
        alarm_id = await chatstore.add_alarm(
            self.db,
            login=login,
            caller=caller,
            call_id=call_id,
            subject=subject,
            message_id=message_id,
            port=port,
            now=now,
        )
        await self.deliver(login)
        if mail:
            row = AlarmRow(
                alarm_id, login, caller, call_id, subject, message_id, port, now, None, None, None
            )
            self._spawn(self.send_mail(row))
        else:
            await chatstore.mark_alarm_mailed(self.db, alarm_id, now=0.0, error="not mailed")
        return alarm_id

    async def deliver(self, login: str) -> int:
        """Push the unseen alarms of ``login`` to its live links (after auth, and on new)."""
        alarms = await chatstore.list_alarms(self.db, login)
        if not alarms:
            return 0
        if self.push(login, p.AlarmList(alarms=[alarm_dict(a) for a in alarms])) == 0:
            return 0
        await chatstore.mark_alarms_delivered(self.db, [a.id for a in alarms], time.time())
        return len(alarms)

    async def list(self, login: str, *, ack: list[int], include_seen: bool) -> list[AlarmRow]:
        if ack:
            await chatstore.ack_alarms(self.db, login, ack, time.time())
        return await chatstore.list_alarms(self.db, login, include_seen=include_seen)

    async def count(self, login: str) -> int:
        """Alarms of ``login`` not yet acknowledged (``auth_ok.alarms``)."""
        return await chatstore.count_alarms(self.db, login)

    async def send_mail(self, a: AlarmRow, attempt: int = 0) -> bool:
        cfg = self.config
        if not cfg.smtp_host:
            log.info("no smtp_host configured: alarm %d is not mailed", a.id)
            await chatstore.mark_alarm_mailed(self.db, a.id, now=None, error="no smtp_host")
            return False
        addresses = await self.emails(a.login)
        if not addresses:
            await chatstore.mark_alarm_mailed(self.db, a.id, now=0.0, error="no address")
            return False
        msg = alarm_mail(
            a, to=addresses[0], sender=cfg.smtp_from, domain=cfg.public_host or "localhost"
        )
        try:
            await aiosmtplib.send(
                msg,
                hostname=cfg.smtp_host,
                port=cfg.smtp_port,
                start_tls=False,
                use_tls=False,
                timeout=30,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("alarm mail %d to %s failed: %s", a.id, a.login, exc)
            await chatstore.mark_alarm_mailed(self.db, a.id, now=None, error=str(exc)[:200])
            if attempt < len(self.retry_delays):
                self._spawn(self._retry(a, attempt))
            return False
        await chatstore.mark_alarm_mailed(self.db, a.id, now=time.time())
        log.info("alarm mail %d sent to %s", a.id, a.login)
        return True

    async def _retry(self, a: AlarmRow, attempt: int) -> None:
        await asyncio.sleep(self.retry_delays[attempt])  # back-off before the next attempt
        await self.send_mail(a, attempt + 1)

    async def retry_unmailed(self) -> None:
        """At start: send the alarm mails a stopped server did not get out."""
        for a in await chatstore.unmailed_alarms(self.db):
            self._spawn(self.send_mail(a))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # unsent mails are retried at the next start
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
