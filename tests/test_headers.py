"""X-CH headers: sign, stamp, parse, verify; strict values both ways (no CR/LF ever)."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chmail import headers as h
from chmail.errors import HeaderError

KEY = b"k" * 32
MID = "<m1@example.org>"


def make(**kw: object) -> h.ChatLink:
    args: dict[str, object] = {
        "login": "alice",
        "port": 41000,
        "host": "ch.example.net",
        "lease": 3,
        "expires": 2_000_000_000,
        "message_id": MID,
    }
    args.update(kw)
    return h.sign(KEY, **args)  # type: ignore[arg-type]


def record(link: h.ChatLink, **kw: object) -> h.LeaseRecord:
    args: dict[str, object] = {
        "login": link.login,
        "port": link.port,
        "host": link.host,
        "lease": link.lease,
        "expires": link.expires,
        "message_id": MID,
        "context": link.context,
    }
    args.update(kw)
    return h.LeaseRecord(**args)  # type: ignore[arg-type]


def through_mail(
    link: h.ChatLink, policy: email.policy.Policy = email.policy.default
) -> h.ChatLink:
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["Message-ID"] = MID
    for name, value in link.headers():
        msg[name] = value
    msg.set_content("hi")
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.compat32)
    got = h.parse((k, str(v)) for k, v in parsed.items())
    assert got is not None
    return got


def test_stamp_parse_verify_round_trip() -> None:
    """A signed link survives stamping into a real mail and parsing back, and verifies."""
    link = make(context="campaign=12; sku=A-100; lang=ko")
    got = through_mail(link)
    assert got == link
    assert h.verify(got, message_id=MID, key=KEY, record=record(link), now=1_000) is None


def test_distinct_rejection_reasons() -> None:
    """Forged, altered, expired, recycled and unknown links get different reasons."""
    link = make()
    now = 1_000
    forged = h.ChatLink(**{**link.__dict__, "mac": "A" * 43})
    assert h.verify(forged, message_id=MID, key=KEY, record=record(link), now=now) == h.FORGED
    other_key = h.sign(b"x" * 32, login="alice", port=41000, host="ch.example.net", lease=3,
                       expires=link.expires, message_id=MID)  # fmt: skip
    assert h.verify(other_key, message_id=MID, key=KEY, record=record(link), now=now) == h.FORGED
    altered = h.ChatLink(**{**link.__dict__, "login": "mallory"})
    assert h.verify(altered, message_id=MID, key=KEY, record=record(link), now=now) == h.ALTERED
    assert h.verify(link, message_id="<x@y>", key=KEY, record=record(link), now=now) == h.ALTERED
    assert (
        h.verify(link, message_id=MID, key=KEY, record=record(link), now=link.expires) == h.EXPIRED
    )
    newer = record(link, lease=4, login="bob", message_id="<new@example.org>")
    assert h.verify(link, message_id=MID, key=KEY, record=newer, now=now) == h.RECYCLED
    assert h.verify(link, message_id=MID, key=KEY, record=None, now=now) == h.UNKNOWN
    assert len({h.FORGED, h.ALTERED, h.EXPIRED, h.RECYCLED, h.UNKNOWN}) == 5
    assert set(h.REASONS) == {h.FORGED, h.ALTERED, h.EXPIRED, h.RECYCLED, h.UNKNOWN}


def test_thread_lease_covers_every_message() -> None:
    """A lease shared by a thread verifies each of its Message-IDs, and no other."""
    link = make(message_id="<r2@example.org>")
    rec = record(link, message_ids=frozenset({MID, "<r2@example.org>"}))
    assert h.verify(link, message_id="<r2@example.org>", key=KEY, record=rec, now=0) is None
    assert h.verify(link, message_id="<r3@example.org>", key=KEY, record=rec, now=0) == h.ALTERED


@pytest.mark.parametrize(
    "headers",
    [
        [("X-CH-Login", "alice")],
        [("X-CH-Login", "alice"), ("X-CH-Login", "bob"), ("X-CH-Port", "1"), ("X-CH-Host", "h"),
         ("X-CH-Sig", "v=1; e=1; n=1; s=" + "A" * 43)],
        [("X-CH-Login", "=?utf-8?q?alice=0D=0AX-Evil:_1?="), ("X-CH-Port", "1"),
         ("X-CH-Host", "h"), ("X-CH-Sig", "v=1; e=1; n=1; s=" + "A" * 43)],
        [("X-CH-Login", "alice"), ("X-CH-Port", "1"), ("X-CH-Host", "h\r\nX-Evil: 1"),
         ("X-CH-Sig", "v=1; e=1; n=1; s=" + "A" * 43)],
        [("X-CH-Login", "alice"), ("X-CH-Port", "٣"), ("X-CH-Host", "h"),
         ("X-CH-Sig", "v=1; e=1; n=1; s=" + "A" * 43)],
        [("X-CH-Login", "alice"), ("X-CH-Port", "1"), ("X-CH-Host", "h"),
         ("X-CH-Sig", "v=2; e=1; n=1; s=" + "A" * 43)],
    ],
)  # fmt: skip
def test_parse_refuses_bad_headers(headers: list[tuple[str, str]]) -> None:
    """Incomplete, repeated, encoded-word, CR/LF, non-ASCII-digit and unknown-version headers."""
    with pytest.raises(HeaderError):
        h.parse(headers)


def test_ordinary_mail_has_no_link() -> None:
    """A mail without X-CH headers parses to None."""
    assert h.parse([("Subject", "hi")]) is None


def test_folded_header_is_unfolded() -> None:
    """RFC 5322 folding inside a value is undone, not refused."""
    link = make()
    sig = link.sig.replace("; s=", ";\r\n s=")
    got = h.parse([*[(k, v) for k, v in link.headers() if k != "X-CH-Sig"], ("X-CH-Sig", sig)])
    assert got == link


nasty = st.text(
    alphabet=st.sampled_from(list("aZ09.-_@ \t\r\n\x00=?:;<>é\u2028\x85")), min_size=0, max_size=30
)
ENCODED_WORDS = ["=?utf-8?q?a=0D=0Ab?=", "=?utf-8?b?YQ0KYg==?=", "a\r\nX-Evil: 1", "a\nb", "a\rb"]


@given(login=nasty, host=nasty, context=nasty)
@settings(max_examples=400, deadline=None)
def test_no_control_character_ever_reaches_a_header(login: str, host: str, context: str) -> None:
    """Whatever the input, stamping either refuses it or emits values without CR/LF/NUL/=?."""
    try:
        link = make(login=login, host=host or "h", context=context)
    except HeaderError:
        return
    for name, value in link.headers():
        assert not any(ch in value for ch in "\r\n\x00\u2028\x85"), (name, value)
        assert "=?" not in value


@pytest.mark.parametrize("evil", ENCODED_WORDS)
@pytest.mark.parametrize("field", ["login", "host", "context", "message_id"])
def test_injection_attempts_refused_on_sign(evil: str, field: str) -> None:
    """CR/LF and encoded words are refused in every signed value."""
    value = f"k={evil}" if field == "context" else evil
    with pytest.raises(HeaderError):
        make(**{field: value})


@given(
    login=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,31}", fullmatch=True),
    port=st.integers(1, 65535),
    lease=st.integers(1, 10**9),
    expires=st.integers(0, 10**11),
)
@settings(max_examples=200, deadline=None)
def test_valid_values_round_trip(login: str, port: int, lease: int, expires: int) -> None:
    """Every valid login/port/lease/expiry round-trips through a real mail and verifies."""
    link = make(login=login, port=port, lease=lease, expires=expires)
    got = through_mail(link)
    assert got == link
    rec = record(link)
    assert h.verify(got, message_id=MID, key=KEY, record=rec, now=expires - 1) is None


@given(value=st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_parse_never_returns_unsafe_values(value: str) -> None:
    """Parsing arbitrary header values either refuses or returns values inside the grammar."""
    base = dict(make().headers())
    for name in ("X-CH-Login", "X-CH-Host", "X-CH-Sig", "X-CH-Port", "X-CH-Context"):
        hdrs = {**base, name: value}
        try:
            link = h.parse(hdrs.items())
        except HeaderError:
            continue
        assert link is not None
        for _, out in link.headers():
            assert not any(ch in out for ch in "\r\n\x00")
            assert "=?" not in out


def test_encoded_newline_refused_even_after_decoding() -> None:
    """A mail whose X-CH-Login is an encoded word hiding CRLF is refused, decoded or not."""
    raw = (
        b"From: a@example.org\r\nMessage-ID: <m1@example.org>\r\n"
        b"X-CH-Login: =?utf-8?q?alice=0D=0AX-Evil=3A_1?=\r\nX-CH-Port: 41000\r\n"
        b"X-CH-Host: ch.example.net\r\nX-CH-Sig: v=1; e=1; n=1; s=" + b"A" * 43 + b"\r\n\r\nhi\r\n"
    )
    for policy in (email.policy.compat32, email.policy.default):
        msg = email.message_from_bytes(raw, policy=policy)
        with pytest.raises(HeaderError):
            h.parse((k, str(v)) for k, v in msg.items())


def test_signature_is_the_signed_links_sig_value() -> None:
    """signature() (values checked by the caller) gives the X-CH-Sig value sign() makes."""
    for kw in ({}, {"context": "campaign=c1; member=m2"}, {"host": "CH.Example.NET", "lease": 9}):
        link = make(**kw)
        args = dict(login=link.login, port=link.port, host=link.host, lease=link.lease)
        sig = h.signature(KEY, **args, expires=link.expires, message_id=MID, context=link.context)
        assert sig == link.sig


def test_mac_is_the_specified_hmac() -> None:
    """The X-CH-Sig MAC is base64url_nopad(HMAC-SHA256(key, the fields joined by LF)), as
    docs/protocol.md specifies (computed here with the standard hmac module)."""
    for kw in ({}, {"context": "campaign=c1"}, {"host": "CH.Example.NET", "lease": 12345}):
        link = make(**kw)
        text = (
            f"v1\n{link.login}\n{link.port}\n{link.host.lower()}\n{link.lease}\n"
            f"{link.expires}\n{MID}\n{link.context}"
        )
        digest = hmac.new(KEY, text.encode("ascii"), hashlib.sha256).digest()
        assert link.mac == base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
