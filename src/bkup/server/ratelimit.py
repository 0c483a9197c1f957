"""Failed-login throttling: a sliding window per (address, user name), in process memory.

Per replica by design: with N replicas an attacker gets N times the budget,
which is still far below what makes password guessing practical.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager

from bkup.errors import AuthError


class TooManyAttempts(AuthError):
    pass


class LoginLimiter:
    def __init__(self, max_failures: int = 10, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures[key]
        while q and q[0] < now - self.window_s:
            q.popleft()
        return q

    @contextmanager
    def attempt(self, key: str) -> Iterator[None]:
        now = time.monotonic()
        with self._lock:
            if len(self._recent(key, now)) >= self.max_failures:
                raise TooManyAttempts("too many failed logins; try again in a few minutes")
        try:
            yield
        except AuthError:
            with self._lock:
                self._recent(key, now).append(now)
            raise
        with self._lock:
            self._failures.pop(key, None)

