"""One pooled SMTP connection of the sender, and what its replies mean.

* 4xx replies and dropped connections are ``Retry`` (the row is tried again later,
  with backoff); 5xx replies are ``Fail`` with the server's own words.
* The caller commits the row as 'sending' before :func:`deliver`: from the start of
  DATA the server may take the mail.
"""

from __future__ import annotations

import contextlib

import aiosmtplib

from chmail.config import ShopConfig
from shop_publicity import compose as c


class Retry(Exception):
    """Try this row again later (4xx, a dropped connection, no chat port)."""


class Fail(Exception):
    """This row failed for good (5xx); the message is the server's words."""


def reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def client(cfg: ShopConfig, password: str) -> aiosmtplib.SMTP:
    sec = cfg.smtp_security
    return aiosmtplib.SMTP(
        hostname=cfg.smtp_host,
        port=cfg.smtp_port,
        username=cfg.smtp_user or None,
        password=password or None,
        use_tls=sec == "tls",
        start_tls=sec == "starttls",
        timeout=cfg.smtp_timeout,
        local_hostname=c.domain_of(cfg.from_addr),
    )


async def deliver(smtp: aiosmtplib.SMTP, host: str, sender: str, rcpt: str, raw: bytes) -> None:
    """MAIL, RCPT, DATA on ``smtp`` (connecting first if needed); raises Retry or Fail."""
    try:
        if not smtp.is_connected:
            await smtp.connect()
        await smtp.mail(sender)
        await smtp.rcpt(rcpt)
    except aiosmtplib.SMTPResponseException as exc:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.rset()
        if 400 <= exc.code < 500:
            raise Retry(reply(exc)) from exc
        raise Fail(reply(exc)) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        smtp.close()
        raise Retry(f"connection to {host} failed: {exc}") from exc
    try:
        await smtp.data(raw)
    except aiosmtplib.SMTPResponseException as exc:
        if 400 <= exc.code < 500:
            raise Retry(reply(exc)) from exc
        raise Fail(reply(exc)) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        smtp.close()
        raise Retry(f"connection dropped during the mail: {exc}") from exc
