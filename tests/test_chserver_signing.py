"""The server's link signature is HMAC-SHA256 (RFC 2104) whatever shortcut computes it."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from chmail import headers


@given(key=st.binary(max_size=100), lease=st.integers(1, 10**9), port=st.integers(1, 65535))
def test_mac_is_rfc2104_hmac_sha256(key: bytes, lease: int, port: int) -> None:
    """The precomputed-pad MAC equals hmac.digest over the documented signed text."""
    mac = headers._mac(
        key, login="alice", port=port, host="CH.Example.org", lease=lease,
        expires=1_700_000_000, message_id="<m@x.y>", context="c=1",
    )  # fmt: skip
    text = f"v1\nalice\n{port}\nch.example.org\n{lease}\n1700000000\n<m@x.y>\nc=1"
    want = hmac.digest(key, text.encode("ascii"), hashlib.sha256)
    assert mac == base64.urlsafe_b64encode(want).decode("ascii").rstrip("=")
