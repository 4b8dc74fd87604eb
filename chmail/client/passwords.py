"""Passwords come from a command or the system keyring; chmail never stores them itself.

``password_command`` is run through the shell (like mutt's and aerc's): its standard output,
without the trailing newline, is the password. ``keyring = true`` asks the system keyring
for service ``chmail`` and key ``<account>:<what>`` (e.g. ``work:imap``). Passwords are
never logged.
"""

from __future__ import annotations

import asyncio
import logging

from chmail.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE = "chmail"
COMMAND_TIMEOUT = 60.0  # a password manager may ask the user to unlock it


async def from_command(command: str, *, what: str) -> str:
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(
            f"The password command for {what} did not finish within {COMMAND_TIMEOUT:.0f} s."
        ) from None
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ConfigError(
            f"The password command for {what} failed (exit {proc.returncode}) {detail[0]}".strip()
        )
    text = out.decode("utf-8", "replace")
    first = text.splitlines()[0] if text else ""
    return first


def from_keyring(key: str, *, what: str) -> str:
    import keyring
    import keyring.errors

    try:
        value = keyring.get_password(SERVICE, key)
    except keyring.errors.KeyringError as exc:
        raise ConfigError(f"The system keyring could not be read for {what}: {exc}.") from exc
    if value is None:
        raise ConfigError(
            f"No password for {what} in the system keyring (service {SERVICE!r}, key {key!r}). "
            f"Store one with: keyring set {SERVICE} {key}"
        )
    return str(value)


async def get(
    *, account: str, what: str, command: str = "", use_keyring: bool = False, required: bool = True
) -> str:
    """The password for ``account``'s ``what`` (``imap``, ``smtp``, ``pop3``, ``ch``)."""
    label = f"account {account!r} ({what})"
    if command:
        return await from_command(command, what=label)
    if use_keyring:
        return await asyncio.to_thread(from_keyring, f"{account}:{what}", what=label)
    if required:
        raise ConfigError(
            f"No password source for {label}: set password_command or keyring = true "
            "(chmail does not store passwords in its config)."
        )
    return ""
