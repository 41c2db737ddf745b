"""Login throttling: too many failures for one email, or from one client address, in a window
answer RATE_LIMITED before the password is even checked (in process, per worker)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from app.errors import RateLimited

WINDOW_SECONDS = 300.0
MAX_PER_EMAIL = 10
MAX_PER_ADDRESS = 50


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - WINDOW_SECONDS:
            failures.popleft()
        return failures

    def check(self, email: str, address: str | None) -> None:
        for key, cap in ((f"email:{email.lower()}", MAX_PER_EMAIL), (f"addr:{address}", MAX_PER_ADDRESS)):
            if key.startswith("addr:") and address is None:
                continue
            failures = self._recent(key)
            if len(failures) >= cap:
                retry = max(1, math.ceil(failures[0] + WINDOW_SECONDS - self._clock()))
                raise RateLimited("too many failed logins; try again later", limit="loginAttempts",
                                  retryAfter=retry)

    def failed(self, email: str, address: str | None) -> None:
        now = self._clock()
        self._recent(f"email:{email.lower()}").append(now)
        if address is not None:
            self._recent(f"addr:{address}").append(now)
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            self._failures.clear()

    def succeeded(self, email: str) -> None:
        self._failures.pop(f"email:{email.lower()}", None)
