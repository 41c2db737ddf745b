"""Login throttling: too many attempts for one email, or from one client address, answer
RATE_LIMITED before the password is even checked.

The attempts are counted in PostgreSQL (`tenantry.rate_buckets`, app.access.admission.SharedBuckets),
so every worker of `serve --workers N` and every server of a deployment counts the same ones:
MAX_PER_EMAIL attempts per email and MAX_PER_ADDRESS per address in a window of WINDOW_SECONDS
(from its first attempt). An attempt is counted before the password is checked, so attempts in
flight at once cannot all pass the check; one that succeeds is taken back from its address's count
and empties its email's. The keys are hashed (no
email is kept in the table). While the database cannot answer, each process counts the failures
of the last window on its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable

import psycopg

from app.access.admission import SharedBuckets
from app.errors import RateLimited

WINDOW_SECONDS = 300.0
MAX_PER_EMAIL = 10
MAX_PER_ADDRESS = 50

log = logging.getLogger("tenantry.throttle")


def email_key(email: str) -> str:
    return "login:e:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def address_key(address: str) -> str:
    return "login:a:" + hashlib.sha256(address.encode()).hexdigest()


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *, shared: SharedBuckets | None = None) -> None:
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self.shared = shared

    def _keys(self, email: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(email_key(email), MAX_PER_EMAIL)]
        return [*keys, (address_key(address), MAX_PER_ADDRESS)] if address is not None else keys

    async def check(self, email: str, address: str | None, *, attempt: bool = True) -> None:
        """RATE_LIMITED when the email or the address has no attempt left; `attempt` counts one (a
        password is about to be checked), else only looks (a reset mail is asked for)."""
        counted: list[str] = []
        for key, cap in self._keys(email, address):
            refused = await self._shared(key, cap, attempt=attempt)
            if refused is None:  # the database cannot say: this process's own count of failures
                failures = self._recent(key)
                refused = failures[0] + WINDOW_SECONDS - self._clock() if len(failures) >= cap else False
            if refused is not False:
                await self._give_back(counted)
                raise RateLimited("too many failed logins; try again later", limit="loginAttempts",
                                  retryAfter=max(1, math.ceil(refused)))
            if attempt and self.shared is not None:
                counted.append(key)

    async def failed(self, email: str, address: str | None) -> None:
        """A wrong password, also counted in this process (for when the database cannot count)."""
        now = self._clock()
        for key, _ in self._keys(email, address):
            self._recent(key).append(now)
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.clear()

    async def succeeded(self, email: str, address: str | None) -> None:
        key = email_key(email)
        self._failures.pop(key, None)
        if self.shared is not None:
            try:
                await self.shared.reset(key)
            except (psycopg.Error, OSError):
                log.warning("shared login throttle unavailable", exc_info=True)
        if address is not None:
            await self._give_back([address_key(address)])

    async def _give_back(self, keys: list[str]) -> None:
        for key in keys:
            if self.shared is not None:
                try:
                    await self.shared.give_back(key)
                except (psycopg.Error, OSError):
                    log.warning("shared login throttle unavailable", exc_info=True)

    async def _shared(self, key: str, cap: int, *, attempt: bool) -> float | bool | None:
        """False: go on (the attempt counted); the seconds until the window ends: refused; None: unknown."""
        if self.shared is None:
            return None
        try:
            if attempt:
                if await self.shared.attempt(key, cap, WINDOW_SECONDS):
                    return False
                return (await self.shared.attempts(key, WINDOW_SECONDS))[1]
            count, left = await self.shared.attempts(key, WINDOW_SECONDS)
            return left if count >= cap else False
        except (psycopg.Error, OSError):
            log.warning("shared login throttle unavailable; counting in this process", exc_info=True)
            return None

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - WINDOW_SECONDS:
            failures.popleft()
        return failures
