"""X-CH-* headers: stamp, parse and verify. Pure functions, no I/O.

Rules:

* A mail that can be escalated to chat carries ``X-CH-Login``, ``X-CH-Port``,
  ``X-CH-Host`` and ``X-CH-Sig`` (and ``X-CH-Context`` for campaign mail).
* ``X-CH-Sig: v=1; e=<expiry, unix s>; n=<lease number>; s=<base64url HMAC-SHA256>``.
  The CH server signs, with its own key, the login, port, host, lease number, expiry,
  the mail's Message-ID and the context. Nobody else can make a valid one.
* Every value is checked against a strict grammar on the way out (stamping) and on the
  way in (parsing). The grammars admit only printable ASCII without spaces where a
  space is not needed, so no CR, LF, NUL or RFC 2047 encoded word (``=?``) can ever be
  written into or read out of a header, whatever the Python email package would do
  with it (CVE-2024-6923: Python 3.11.7 re-emits encoded newlines as real headers).
* A mail carrying the same X-CH header twice is refused: which one is true is unknown.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from chmail.errors import HeaderError

SIG_VERSION = 1

H_LOGIN = "X-CH-Login"
H_PORT = "X-CH-Port"
H_HOST = "X-CH-Host"
H_SIG = "X-CH-Sig"
H_CONTEXT = "X-CH-Context"
ALL_HEADERS = (H_LOGIN, H_PORT, H_HOST, H_SIG, H_CONTEXT)

# Grammars. Logins: what users may choose; said in every error about them.
LOGIN_RULE = (
    "1 to 32 characters: lowercase letters a-z, digits 0-9, '.', '_' or '-', "
    "starting with a letter or digit"
)
_LOGIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
# RFC 5322 msg-id, restricted to printable ASCII without spaces, angle brackets required.
_MSGID = re.compile(r"<[!-;=?-~]{1,246}>")
_CONTEXT_KEY = re.compile(r"[a-z][a-z0-9_]{0,15}")
_CONTEXT_VALUE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SIG = re.compile(r"v=(\d{1,3}); e=(\d{1,12}); n=(\d{1,12}); s=([A-Za-z0-9_-]{43})")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def check_login(login: str) -> str:
    """Return ``login`` if it is a valid CH login id, else raise HeaderError naming the rule."""
    if not isinstance(login, str) or not _LOGIN.fullmatch(login):
        raise HeaderError(f"{_show(login)} is not a valid login: use {LOGIN_RULE}.")
    return login


def check_host(host: str) -> str:
    if not isinstance(host, str) or not (_HOSTNAME.fullmatch(host) or _IPV6.fullmatch(host)):
        raise HeaderError(f"{_show(host)} is not a valid host name or address.")
    return host


def check_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise HeaderError(f"{_show(port)} is not a valid port (1-65535).")
    return port


def check_message_id(message_id: str) -> str:
    if not isinstance(message_id, str) or not _MSGID.fullmatch(message_id):
        raise HeaderError(f"{_show(message_id)} is not a valid Message-ID like <id@host>.")
    return message_id


def check_context(context: str) -> str:
    """``key=value; key=value`` with plain keys and values, or ''."""
    if context == "":
        return context
    if not isinstance(context, str) or _FORBIDDEN.search(context):
        raise HeaderError(f"{_show(context)} is not a valid X-CH-Context.")
    parse_context(context)
    return context


def parse_context(context: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in context.split(";"):
        key, sep, value = part.strip().partition("=")
        if not sep or not _CONTEXT_KEY.fullmatch(key) or not _CONTEXT_VALUE.fullmatch(value):
            raise HeaderError(f"{_show(context)} is not a valid X-CH-Context.")
        if key in out:
            raise HeaderError(f"X-CH-Context names {key!r} twice.")
        out[key] = value
    return out


def format_context(values: dict[str, str]) -> str:
    ctx = "; ".join(f"{k}={v}" for k, v in values.items())
    return check_context(ctx)


def _show(value: object) -> str:
    """A value made safe to print inside an error sentence."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- the link


@dataclass(frozen=True)
class ChatLink:
    """What a mail's X-CH headers say. ``mac`` is the base64url HMAC from X-CH-Sig."""

    login: str
    port: int
    host: str
    lease: int
    expires: int
    mac: str
    context: str = ""
    version: int = SIG_VERSION

    @property
    def sig(self) -> str:
        return f"v={self.version}; e={self.expires}; n={self.lease}; s={self.mac}"

    def headers(self) -> list[tuple[str, str]]:
        """The header lines to stamp, every value re-checked."""
        out = [
            (H_LOGIN, check_login(self.login)),
            (H_PORT, str(check_port(self.port))),
            (H_HOST, check_host(self.host)),
            (H_SIG, self.sig),
        ]
        if not _SIG.fullmatch(self.sig):
            raise HeaderError("refusing to stamp a malformed X-CH-Sig")
        if self.context:
            out.append((H_CONTEXT, check_context(self.context)))
        return out


def _mac(
    key: bytes,
    login: str,
    port: int,
    host: str,
    lease: int,
    expires: int,
    message_id: str,
    context: str,
) -> str:
    text = (
        f"v{SIG_VERSION}\n{login}\n{port}\n{host.lower()}\n{lease}\n{expires}\n"
        f"{message_id}\n{context}"
    )
    inner, outer = _pads(key)
    mac = inner.copy()
    mac.update(text.encode("ascii"))
    out = outer.copy()
    out.update(mac.digest())
    # base64url without padding (binascii directly: base64's wrappers cost twice as much)
    b64 = binascii.b2a_base64(out.digest(), newline=False).translate(_URLSAFE)
    return b64.rstrip(b"=").decode("ascii")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


@functools.lru_cache(maxsize=8)
def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once: the inner
    and outer SHA-256 states, only ever copied (a third of the cost of hmac.digest)."""
    block = 64  # SHA-256 block size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def sign(
    key: bytes,
    *,
    login: str,
    port: int,
    host: str,
    lease: int,
    expires: int,
    message_id: str,
    context: str = "",
) -> ChatLink:
    """Make a signed link (the CH server does this when it leases a port)."""
    check_login(login)
    check_port(port)
    check_host(host)
    check_message_id(message_id)
    check_context(context)
    if lease < 1 or expires < 0:
        raise HeaderError("lease numbers start at 1 and expiry is a unix time")
    mac = _mac(key, login, port, host, lease, expires, message_id, context)
    return ChatLink(login, port, host, lease, expires, mac, context)


def signature(
    key: bytes,
    *,
    login: str,
    port: int,
    host: str,
    lease: int,
    expires: int,
    message_id: str,
    context: str = "",
) -> str:
    """The ``X-CH-Sig`` value :func:`sign` would make, for values the caller has
    already checked with this module's ``check_*`` functions (the CH server's alloc
    path checks each one on its way in); nothing is checked here."""
    mac = _mac(key, login, port, host, lease, expires, message_id, context)
    return f"v={SIG_VERSION}; e={expires}; n={lease}; s={mac}"


def parse(headers: Iterable[tuple[str, str]]) -> ChatLink | None:
    """Read the X-CH headers from ``(name, raw value)`` pairs.

    Returns None when the mail carries no X-CH header at all (an ordinary mail), a
    ChatLink when they are complete and well-formed, and raises HeaderError otherwise
    (incomplete, repeated, or a value outside its grammar).
    """
    found: dict[str, str] = {}
    for name, value in headers:
        canon = next((h for h in ALL_HEADERS if h.lower() == name.strip().lower()), None)
        if canon is None:
            continue
        if canon in found:
            raise HeaderError(f"the mail carries {canon} twice; its chat link cannot be trusted.")
        found[canon] = _unfold(str(value))
    if not found:
        return None
    missing = [h for h in (H_LOGIN, H_PORT, H_HOST, H_SIG) if h not in found]
    if missing:
        raise HeaderError(f"the mail's chat link is incomplete: {', '.join(missing)} missing.")
    login = check_login(found[H_LOGIN])
    port_text = found[H_PORT]
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise HeaderError(f"X-CH-Port {_show(port_text)} is not a port number.")
    port = check_port(int(port_text))
    host = check_host(found[H_HOST])
    version, expires, lease, mac = parse_sig(found[H_SIG])
    if version != SIG_VERSION:
        raise HeaderError(
            f"X-CH-Sig version {version} is not supported (this side: {SIG_VERSION})."
        )
    context = check_context(found.get(H_CONTEXT, ""))
    return ChatLink(login, port, host, lease, expires, mac, context, version)


def parse_sig(value: str) -> tuple[int, int, int, str]:
    """``X-CH-Sig`` value to ``(version, expires, lease, mac)``; HeaderError if malformed."""
    m = _SIG.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise HeaderError("X-CH-Sig is malformed; the chat link cannot be checked.")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)


def _unfold(value: str) -> str:
    """Undo RFC 5322 folding (CRLF + WSP); any other CR, LF or control char is refused."""
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value).strip()
    if _FORBIDDEN.search(unfolded.replace("\t", " ")):
        raise HeaderError("an X-CH header holds a control character; the chat link is refused.")
    return unfolded


# ----------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class LeaseRecord:
    """What table 2 holds for a port: the truth a link is checked against."""

    login: str
    port: int
    host: str
    lease: int
    expires: int
    message_id: str
    context: str = ""
    # Every Message-ID sharing this lease (a thread's replies reuse it); message_id is
    # the first of them.
    message_ids: frozenset[str] = frozenset()

    def covers(self, message_id: str) -> bool:
        return message_id == self.message_id or message_id in self.message_ids


# Reasons, as stable codes (the same strings as the protocol's error codes).
FORGED = "link_forged"
ALTERED = "link_altered"
EXPIRED = "link_expired"
RECYCLED = "link_recycled"
UNKNOWN = "link_unknown"

REASONS = {
    FORGED: "this chat link was not made by this CH server (its signature does not match)",
    ALTERED: "this chat link was changed after it was sent (its headers no longer match "
    "their signature)",
    EXPIRED: "this chat link has expired",
    RECYCLED: "this chat link is old: its port has since been given to another mail",
    UNKNOWN: "this CH server has no chat on that port",
}


def verify(
    link: ChatLink,
    *,
    message_id: str,
    key: bytes,
    record: LeaseRecord | None,
    now: float,
) -> str | None:
    """Check ``link`` from a mail whose Message-ID is ``message_id`` against table 2.

    Returns None when the link is valid, else one of FORGED, ALTERED, EXPIRED, RECYCLED,
    UNKNOWN (see REASONS). The order matters: a recycled port is reported as recycled
    even though its old signature is also still intact.
    """
    if record is None or record.port != link.port:
        return UNKNOWN
    expected = _mac(
        key, link.login, link.port, link.host, link.lease, link.expires, message_id, link.context
    )
    genuine = hmac.compare_digest(expected, link.mac)
    if link.lease < record.lease:
        return RECYCLED if genuine else FORGED
    if link.lease > record.lease:
        return FORGED
    if not genuine:
        same = (
            link.login == record.login
            and link.host.lower() == record.host.lower()
            and link.expires == record.expires
            and link.context == record.context
            and record.covers(message_id)
        )
        return FORGED if same else ALTERED
    if link.login != record.login or not record.covers(message_id):
        return ALTERED
    if now >= link.expires:
        return EXPIRED
    return None
