"""Admission control for one model's queue: who may wait, and when a refused client returns.

A request is admitted while

* the queue has room (``max_queue_size`` requests: the bound on memory), and
* it can be expected to start within its queue timeout at the rate the queue drains now
  (deadline-aware admission): with ``ahead`` requests in front of it and the queue draining
  ``rate`` requests per second, it would wait about ``ahead / rate`` seconds.

Refusing at the door costs microseconds and happens before the request is read or decoded;
a request admitted only to time out costs the client its whole timeout and the server the
work of reading and decoding it. Requests that are admitted still expire at their queue
timeout (the estimate can be wrong); this only turns most of those late refusals into early
ones.

The drain rate is measured, never configured: each worker's time from one batch to the next
while requests were waiting, divided by the requests it served (an exponentially weighted
mean), so it includes everything that slows the queue down (model runs, batching, the event
loop's other work). Until a few batches have run there is no estimate and only the size bound
applies.

Every refusal says when to come back (``retry_after_s``): the time the queue now in front of
the refused request takes to drain or, while refusals go on without a pause, how long they have
gone on (an overload that has lasted 40 ms is likely to last a while more, and clients that
come back sooner are only refused again), and never more than the queue timeout, since by then
every request now queued has started or expired. The overload counts as over once no request
was refused for twice the last suggested back-off: everyone told to come back got in.
"""

from __future__ import annotations

import time

from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import QueueFull

__all__ = ["MIN_RETRY_AFTER_S", "Admission"]

MIN_RETRY_AFTER_S = 0.001  # seconds: the shortest back-off ever suggested
_ALPHA = 0.2  # weight of the newest batch in the drain estimate
_WARMUP_BATCHES = 3  # batches measured before the estimate is trusted


class Admission:
    """The admission decision and the drain-rate estimate of one model's queue.

    Not thread-safe: the batcher calls it from its event loop only.
    """

    def __init__(self, label: str, config: BatchConfig) -> None:
        self.label = label
        self.config = config
        self._per_request_s: float | None = None  # one worker's seconds per request served
        self._samples = 0
        self._overload_since: float | None = None  # first refusal of the current overload
        self._last_refusal = 0.0  # time.perf_counter() of the last refusal
        self._last_retry_s = 0.0  # the back-off suggested then

    # ------------------------------------------------------------ the estimate
    def observe(self, interval_s: float, requests: int) -> None:
        """One worker took ``interval_s`` seconds to serve ``requests`` queued requests."""
        if requests <= 0 or interval_s <= 0:
            return
        sample = interval_s / requests
        current = self._per_request_s
        self._per_request_s = sample if current is None else current + _ALPHA * (sample - current)
        self._samples += 1

    @property
    def rate(self) -> float | None:
        """Requests per second the queue drains at (all instances), ``None`` until measured."""
        if self._samples < _WARMUP_BATCHES:
            return None
        return self._rate()

    def _rate(self) -> float | None:
        if self._per_request_s is None:
            return None
        return self.config.instances / self._per_request_s

    def wait_s(self, ahead: int) -> float | None:
        """Expected seconds before a request with ``ahead`` requests in front of it starts."""
        rate = self.rate
        return None if rate is None else ahead / rate

    def retry_after_s(self, ahead: int, now: float | None = None) -> float:
        """How long a refused client should wait (seconds), at ``now`` (``perf_counter``).

        The longer of the queue's drain time and the age of the current overload, at most the
        queue timeout. Early on, a single measured batch is estimate enough for the drain
        time; with none at all, one second (the unit of ``Retry-After``) or the queue timeout
        if shorter.
        """
        cap = self.config.queue_timeout_s
        rate = self._rate()
        wait = min(1.0, cap) if rate is None else ahead / rate
        if self._overload_since is not None:
            now = time.perf_counter() if now is None else now
            if now - self._last_refusal <= 2 * self._last_retry_s:
                wait = max(wait, now - self._overload_since)
        return max(MIN_RETRY_AFTER_S, min(wait, cap))

    def _refused(self, ahead: int) -> float:
        """Note a refusal now; the back-off to suggest to it."""
        now = time.perf_counter()
        if self._overload_since is None or now - self._last_refusal > 2 * self._last_retry_s:
            self._overload_since = now  # a new overload starts
        retry = self.retry_after_s(ahead, now)
        self._last_refusal, self._last_retry_s = now, retry
        return retry

    # ------------------------------------------------------------ the decision
    def check(self, ahead: int, timeout_s: float | None = None) -> str | None:
        """``None`` to admit; otherwise why not: ``"queue_full"`` or ``"deadline"``.

        ``timeout_s``: the request's own queue timeout when it asked for less than the model's.
        """
        if ahead >= self.config.max_queue_size:
            return "queue_full"
        wait = self.wait_s(ahead)
        if wait is not None:
            limit = self.config.queue_timeout_s
            if timeout_s is not None and timeout_s < limit:
                limit = timeout_s
            if wait > limit:
                return "deadline"
        return None

    def refusal(self, reason: str, ahead: int, timeout_s: float | None = None) -> QueueFull:
        """The error for a refused request (503 UNAVAILABLE), with its ``retry_after_s``."""
        retry = self._refused(ahead)
        if reason == "queue_full":
            message = (
                f"model {self.label!r} is overloaded: its queue holds "
                f"{self.config.max_queue_size} requests already; retry in {retry * 1e3:.0f} ms"
            )
        else:
            limit = self.config.queue_timeout_s
            if timeout_s is not None and timeout_s < limit:
                limit = timeout_s
            wait = self.wait_s(ahead) or 0.0
            message = (
                f"model {self.label!r} is overloaded: {ahead} queued requests take about "
                f"{wait * 1e3:.0f} ms to drain, longer than the queue timeout of "
                f"{limit * 1e3:.0f} ms; retry in {retry * 1e3:.0f} ms"
            )
        return QueueFull(message, retry_after_s=retry)
