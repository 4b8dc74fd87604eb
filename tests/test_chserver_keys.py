"""The signing key file: created once with mode 0600, refused when others can read it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chmail.chserver.keys import KEY_FILE, load_or_create_key, read_key
from chmail.errors import ConfigError


def test_key_created_once_private(tmp_path: Path) -> None:
    """The first start creates a 0600 key in a 0700 directory; later starts read the same key."""
    data = tmp_path / "data"
    key = load_or_create_key(data)
    assert len(key) == 32
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert load_or_create_key(data) == key
    assert read_key(data) == key


def test_readable_key_refused(tmp_path: Path) -> None:
    """A key other users can read is refused with the chmod to fix it."""
    load_or_create_key(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key(tmp_path)


def test_missing_or_damaged_key(tmp_path: Path) -> None:
    """check-headers on a directory without a key, or with a damaged one, says so."""
    with pytest.raises(ConfigError, match="--data"):
        read_key(tmp_path)
    (tmp_path / KEY_FILE).write_text("not hex\n")
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(ConfigError, match="damaged"):
        read_key(tmp_path)
