"""A circuit breaker per remote: stop sending work to a server that keeps failing.

::

    closed --(``failures`` in a row)--> open --(``open_s`` passed)--> half-open
      ^                                  ^                               |
      |                                  +-------(trial fails)-----------+
      +--------------------(trial succeeds)------------------------------+

While open, the offloader leaves the remote out of the placement options (it is
"ejected") and answers locally or through another remote. Once ``open_s`` has passed, one
trial is let through; the offloader makes it a cheap probe (the ready endpoint) so no
user request waits on a server that may still be down. A failed trial doubles the open
time (up to ``max_open_s``). A breaker closed by a probe stays wary: the first failed call
opens it again at once, because a server that answers probes may still fail real work.

The cap is what a server that comes back waits, at worst, before it is used again; a trial
is one ready probe with no tensors, so a cap of 2 s costs a dead server one tiny request
every 2 s and keeps the promise that offloading resumes within about 2 s of the server's
return, however long it was away (with a 10 s cap, a server back after 8 s waited 7 s).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker"]


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens and how long it stays open."""

    failures: int = 3  # consecutive failures that open it
    open_s: float = 0.5  # seconds open before the first trial
    max_open_s: float = 2.0  # seconds: cap of the doubling after failed trials


class CircuitBreaker:
    """Closed / open / half-open, thread-safe. ``clock`` is injectable for tests."""

    def __init__(
        self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive
        self._open_s = self.config.open_s
        self._retry_at = 0.0
        self._trial = False  # a half-open trial is in flight
        self._wary = False  # closed by a probe; no real call has succeeded since
        self.opened = 0  # how many times it opened (for reports)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.state.value}, failures={self._failures})"

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state_now()

    def _state_now(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self._retry_at:
            self._state = BreakerState.HALF_OPEN
            self._trial = False
        return self._state

    @property
    def closed(self) -> bool:
        """True if requests may go to this remote (cheap: no lock on the fast path)."""
        return self._state is BreakerState.CLOSED

    def allow_trial(self) -> bool:
        """In half-open state, take the one trial slot (True once until it is decided)."""
        with self._lock:
            if self._state_now() is not BreakerState.HALF_OPEN or self._trial:
                return False
            self._trial = True
            return True

    def retry_in(self) -> float:
        """Seconds until a trial is due (0 if due now or not open)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._retry_at - self._clock())

    def record_success(self, *, trial: bool = False) -> None:
        """An answered call (``trial=False``), or a successful half-open trial (a probe)."""
        with self._lock:
            if trial:
                if self._state is not BreakerState.CLOSED:
                    self._state = BreakerState.CLOSED
                    self._failures = max(self.config.failures - 1, 0)  # one strike opens it
                    self._wary = True
                self._trial = False
                return
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._open_s = self.config.open_s
            self._trial = False
            self._wary = False

    def record_failure(self) -> None:
        """A failed call or trial."""
        with self._lock:
            state = self._state_now()
            self._failures += 1
            if state is BreakerState.HALF_OPEN or (
                state is BreakerState.CLOSED and self._failures >= self.config.failures
            ):
                if state is BreakerState.HALF_OPEN or self._wary:
                    self._open_s = min(self._open_s * 2, self.config.max_open_s)
                self._wary = False
                self._state = BreakerState.OPEN
                self._retry_at = self._clock() + self._open_s
                self._trial = False
                self.opened += 1
