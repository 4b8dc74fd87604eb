"""The server's signing key: 32 random bytes in ``<data>/signing.key``, mode 0600.

Created at first start (exclusive create, so two servers starting at once cannot each
write a different key); afterwards only read. Whoever holds this file can forge chat
links for this server, so it is refused when other users may read it.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from chmail.errors import ConfigError

log = logging.getLogger(__name__)

KEY_FILE = "signing.key"
KEY_BYTES = 32


def ensure_data_dir(data_dir: Path) -> Path:
    """Create the data directory (0700) if needed; return it."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create the data directory {data_dir}: {exc.strerror}.") from exc
    return data_dir


def load_or_create_key(data_dir: Path) -> bytes:
    """The signing key of the server whose data lives in ``data_dir``."""
    path = ensure_data_dir(data_dir) / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise ConfigError(f"Cannot create the signing key {path}: {exc.strerror}.") from exc
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key.hex().encode("ascii") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("created a new signing key in %s", path)
    return key


def read_key(data_dir: Path) -> bytes:
    """The existing key (for check-headers); a clear error if the server never ran."""
    path = data_dir / KEY_FILE
    if not path.exists():
        raise ConfigError(
            f"No signing key in {data_dir}: this is not the data directory of a CH server "
            "that has run. Pass the server's --data DIR."
        )
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the signing key {path}: {exc}.") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The signing key {path} can be read by other users; run `chmod 600 {path}`."
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"The signing key {path} is damaged (expected {KEY_BYTES} hex bytes).")
    return key
