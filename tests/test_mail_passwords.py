"""Passwords come from a command or the keyring, with clear errors otherwise."""

from __future__ import annotations

import pytest

from chmail.client import passwords
from chmail.errors import ConfigError


async def test_password_command_first_line() -> None:
    """The first output line of password_command is the password."""
    pw = await passwords.get(account="a", what="imap", command="printf 's3cret\\nother\\n'")
    assert pw == "s3cret"


async def test_failing_command_is_a_sentence() -> None:
    """A failing password command says which account and what failed, not the output."""
    with pytest.raises(ConfigError, match=r"account 'a' \(imap\).*exit 3"):
        await passwords.get(account="a", what="imap", command="echo nope >&2; exit 3")


async def test_no_source_and_empty_keyring() -> None:
    """No source at all, or a keyring without the entry, are refused with advice."""
    with pytest.raises(ConfigError, match="password_command or keyring"):
        await passwords.get(account="a", what="smtp")
    with pytest.raises(ConfigError, match="keyring set chmail a:smtp"):
        await passwords.get(account="a", what="smtp", use_keyring=True)
