"""One campaign mail as bytes, and the per-recipient names in it. Pure: no I/O.

Rules:

* The Message-ID is a function of (campaign, member, campaign secret): the same
  recipient always gets the same Message-ID, so a mail resent after a crash is the
  *same* message to every receiver that de-duplicates by Message-ID, and the shop can
  tell which mail a reply, a bounce or a chat belongs to.
* The unsubscribe token is an HMAC of (campaign, member) under the shop's key: nobody
  can unsubscribe anyone but the holder of that mail.
* ``List-Unsubscribe`` + ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
  (RFC 8058 section 3.1): a POST to the URL unsubscribes without further questions.
* Lines end in CRLF (RFC 5322 2.3); a body that is not plain 7-bit ASCII with short
  lines is sent quoted-printable (RFC 2045 6.7), so no 8BITMIME server support is
  needed and no line exceeds 998 characters (RFC 5322 2.1.1).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import quopri
import re
import time
from email.header import Header
from email.utils import formataddr, formatdate

from chmail.headers import check_message_id

MAX_LINE = 998  # RFC 5322 2.1.1
# A display name of atext and spaces needs no quoting (RFC 5322 3.2.3, 3.4): it is
# written as is, as formataddr would, without formataddr's per-call parsing.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")


@functools.lru_cache(maxsize=16)
def _keyed(key: str) -> hmac.HMAC:
    """The HMAC state after the key (copied per message, not re-keyed)."""
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date header for one second: a campaign sends hundreds of mails per second."""
    return formatdate(second, usegmt=True)


def _to(name: str, addr: str) -> str:
    if name and name[0] != " " and name[-1] != " " and _PLAIN_NAME.fullmatch(name):
        return f"{name} <{addr}>"
    return formataddr((name, addr), charset="utf-8")


def _mac(key: str, text: str, n: int) -> str:
    h = _keyed(key).copy()
    h.update(text.encode())
    digest = h.digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:n]


def message_id(secret: str, campaign_id: int, member_id: int, domain: str) -> str:
    tag = _mac(secret, f"msgid:{campaign_id}:{member_id}", 12)
    return check_message_id(f"<shop.{campaign_id}.{member_id}.{tag}@{domain}>")


def unsubscribe_token(key: str, campaign_id: int, member_id: int) -> str:
    return _mac(key, f"unsub:{campaign_id}:{member_id}", 22)


def token_ok(key: str, campaign_id: int, member_id: int, token: str) -> bool:
    return hmac.compare_digest(unsubscribe_token(key, campaign_id, member_id), token)


def unsubscribe_url(base: str, key: str, campaign_id: int, member_id: int) -> str:
    token = unsubscribe_token(key, campaign_id, member_id)
    return f"{base.rstrip('/')}/u/{campaign_id}/{member_id}/{token}"


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].strip().strip(">").lower() or "localhost"


def _subject(subject: str) -> str:
    if subject.isascii() and len(subject) <= 900:
        return subject
    return Header(subject, "utf-8", maxlinelen=76, header_name="Subject").encode()


def compose(
    *,
    from_addr: str,
    to_addr: str,
    to_name: str,
    subject: str,
    body: str,
    msg_id: str,
    unsubscribe: str,
    extra: list[tuple[str, str]] | None = None,
    date: float | None = None,
) -> bytes:
    """The mail's bytes, CRLF line ends, ready for SMTP DATA."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    plain = text.isascii() and all(len(line) <= 76 for line in lines)
    headers = [
        ("From", from_addr),
        ("To", _to(to_name, to_addr)),
        ("Subject", _subject(subject)),
        ("Date", _date(int(time.time() if date is None else date))),
        ("Message-ID", msg_id),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "7bit" if plain else "quoted-printable"),
        ("List-Unsubscribe", f"<{unsubscribe}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        *(extra or []),
    ]
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    if plain:
        data = "\r\n".join(lines).encode("ascii")
    else:
        data = quopri.encodestring(text.encode("utf-8")).replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return head.encode("ascii") + b"\r\n" + data
