"""Retries that cannot amplify an outage: a retry budget and full-jitter backoff.

Only failures where the request never reached a working server are retried (connection
refused or dropped, connect timeout, HTTP 503: see ``RemoteError.retryable``). Even those
draw from a :class:`RetryBudget`: every request deposits ``ratio`` tokens and every retry
spends one, so over any stretch retries add at most ``ratio`` (10%) to the requests plus a
small reserve, however many calls fail. Waits between tries are drawn uniformly from
``[0, min(cap, base x 2^attempt)]`` ("full jitter"), so clients do not retry in lockstep.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

__all__ = ["RetryBudget", "RetryConfig", "full_jitter"]


@dataclass(frozen=True)
class RetryConfig:
    """How a failed remote try may be retried."""

    max_attempts: int = 3  # remote tries per request, the first one included
    backoff_base_s: float = 0.01  # seconds: first backoff cap
    backoff_cap_s: float = 0.25  # seconds: largest backoff cap
    budget_ratio: float = 0.1  # retries per request the budget refills
    budget_reserve: float = 10.0  # tokens the budget holds at most (and starts with)


def full_jitter(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
    return rng.uniform(0.0, min(cap_s, base_s * (2.0 ** max(attempt - 1, 0))))


class RetryBudget:
    """A token bucket: requests deposit ``ratio``, retries withdraw 1. Thread-safe."""

    def __init__(self, ratio: float = 0.1, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self.reserve = reserve
        self._tokens = reserve
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.denied = 0

    @property
    def tokens(self) -> float:
        return self._tokens

    def deposit(self) -> None:
        """Called once per request."""
        with self._lock:
            self.requests += 1
            self._tokens = min(self.reserve, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        """May one retry be made now? Spends a token if so."""
        with self._lock:
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.retries += 1
                return True
            self.denied += 1
            return False
