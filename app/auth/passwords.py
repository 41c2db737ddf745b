"""argon2id password hashing, with a constant-time answer for unknown users."""

from __future__ import annotations

import asyncio
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.errors import InvalidInput

MIN_PASSWORD_LENGTH = 8


class Passwords:
    def __init__(self, *, time_cost: int, memory_kib: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)

    @cached_property
    def _dummy_hash(self) -> str:
        return self._hasher.hash("tenantry-dummy-password")

    async def hash(self, password: str) -> str:
        check_password_policy(password)
        # argon2 is deliberately slow; keep it off the event loop.
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when the password matches. Spends the same time when there is no user."""
        target = password_hash or self._dummy_hash
        try:
            ok = await asyncio.to_thread(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(ok) and password_hash is not None


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password")
    if len(password) > 1024:
        raise InvalidInput("password must be at most 1024 characters", field="password")
    if password.strip() == "" or len(set(password)) < 4:
        raise InvalidInput("password is too simple", field="password")
