"""Password hashing (argon2id via argon2-cffi) and login checks.

Hashing cost comes from ``[server] argon2_*`` (defaults: argon2-cffi's RFC 9106 low-memory
profile). A hash records its own parameters, so verifying always uses the cost the hash
was made with; lowering the setting only affects hashes made afterwards (the benchmark
does that to log in thousands of connections quickly). Verification runs in a worker
thread so the event loop keeps serving other clients meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from chmail.errors import HeaderError, ValidationError
from chmail.headers import LOGIN_RULE, check_login

MAX_PASSWORD = 1024  # bytes; longer is refused rather than hashed


@dataclass(frozen=True)
class HashCost:
    time_cost: int = argon2.DEFAULT_TIME_COST
    memory_kib: int = argon2.DEFAULT_MEMORY_COST
    parallelism: int = argon2.DEFAULT_PARALLELISM


class Hasher:
    def __init__(self, cost: HashCost | None = None) -> None:
        c = cost or HashCost()
        self._ph = argon2.PasswordHasher(
            time_cost=c.time_cost, memory_cost=c.memory_kib, parallelism=c.parallelism
        )
        # Verified against when the login is unknown, so both cases take the same time.
        self._dummy = self._ph.hash("chmail-no-such-user")

    def hash(self, password: str) -> str:
        check_password(password)
        return self._ph.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; an unknown login (None) is checked anyway."""
        if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD:
            return False
        try:
            return self._ph.verify(stored_hash or self._dummy, password) and bool(stored_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify_async(self, stored_hash: str | None, password: str) -> bool:
        return await asyncio.to_thread(self.verify, stored_hash, password)


def check_password(password: str) -> str:
    if not password:
        raise ValidationError("The password is empty; give one on standard input.")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD:
        raise ValidationError(f"The password is longer than {MAX_PASSWORD} bytes.")
    if any(ch in password for ch in "\r\n\x00"):
        raise ValidationError("The password may not contain line breaks or NUL characters.")
    return password


def valid_login(login: str) -> str:
    """``login`` if it is a valid CH login id; else ValidationError naming the rule."""
    try:
        return check_login(login)
    except HeaderError:
        shown = repr(login) if len(repr(login)) <= 40 else repr(login)[:37] + "..."
        raise ValidationError(f"{shown} is not a valid login: use {LOGIN_RULE}.") from None
