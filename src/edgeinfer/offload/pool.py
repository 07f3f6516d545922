"""The offloader's remotes: each with its estimates and circuit breaker, probed in the
background.

A probe is one call to the model's ready endpoint: no tensors, so its round trip is the
network's RTT plus a trivial request. The offloader probes a remote when its RTT estimate
is older than ``probe_after_s`` or unknown (an inference call cannot tell RTT from
transfer time, so without fresh probes a longer RTT would pass for a slower link), when a
call took much longer than predicted, and, while its breaker is open, as the breaker's
half-open trial: user requests never wait on a server that may still be down. A probe
that disagrees with the estimate by more than 2x is confirmed at once. The first
probe on a fresh connection pays for the TCP handshake, so it is made twice and the second
one counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from edgeinfer.offload.breaker import BreakerConfig, CircuitBreaker
from edgeinfer.offload.errors import RemoteError, RemoteRejected
from edgeinfer.offload.estimate import RemoteEstimates
from edgeinfer.offload.policy import Placement
from edgeinfer.offload.remote import RemoteModel

__all__ = ["RemotePool", "RemoteSlot"]

_REQUEST_SPECIFIC = frozenset({400, 413, 422})  # a 4xx about this request, not the server


def _differs(sample: float, estimate: float) -> bool:
    """More than twice or less than half the estimate (and by more than 2 ms)."""
    return abs(sample - estimate) > 0.002 and not 0.5 <= sample / max(estimate, 1e-9) <= 2.0


class RemoteSlot:
    """One remote with its estimates, breaker and probe state."""

    def __init__(
        self, index: int, remote: RemoteModel, breaker: BreakerConfig, window: int, alpha: float
    ) -> None:
        self.index = index
        self.remote = remote
        self.label = remote.url
        self.placement = Placement("remote", index)
        self.est = RemoteEstimates(window, alpha)
        self.breaker = CircuitBreaker(breaker)
        self.probing = threading.Lock()  # held while a probe is in flight


class RemotePool:
    """The remotes of one offloader; ``lock`` guards their estimates."""

    def __init__(
        self,
        remotes: Sequence[RemoteModel],
        *,
        breaker: BreakerConfig,
        probe_timeout_s: float,  # seconds a probe may take
        window: int,
        alpha: float,
        lock: threading.Lock,
    ) -> None:
        self.slots = [RemoteSlot(i, r, breaker, window, alpha) for i, r in enumerate(remotes)]
        self.probe_timeout_s = probe_timeout_s
        self.lock = lock
        self.probes = 0  # probes answered
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def any_closed(self) -> bool:
        return any(s.breaker.closed for s in self.slots)

    def failed(self, slot: RemoteSlot, exc: RemoteError) -> None:
        """A call to ``slot`` failed with ``exc``: count it against the remote."""
        with self.lock:
            slot.est.observe_failure()
        if not (isinstance(exc, RemoteRejected) and exc.status in _REQUEST_SPECIFIC):
            slot.breaker.record_failure()

    def next_slot(self, failed: RemoteSlot, tried: Sequence[RemoteSlot]) -> RemoteSlot | None:
        """Another healthy remote not tried yet; else the same one if still healthy."""
        for slot in self.slots:
            if slot not in tried and slot.breaker.closed:
                return slot
        return failed if failed.breaker.closed else None

    # ------------------------------------------------------------ probing
    def maybe_probe(self, slot: RemoteSlot) -> None:
        """Probe ``slot`` in the background (its breaker's trial when it is not closed)."""
        if self._closed or not slot.probing.acquire(blocking=False):
            return
        trial = not slot.breaker.closed
        if trial and not slot.breaker.allow_trial():
            slot.probing.release()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="offload-probe")
        try:
            self._pool.submit(self._probe_in_background, slot, trial)
        except RuntimeError:  # shutting down
            slot.probing.release()

    def _probe_in_background(self, slot: RemoteSlot, trial: bool) -> None:
        try:
            before = slot.est.rtt.value
            rtt = self.probe(slot, trial=trial)
            for _ in range(2):  # the link changed? confirm now, not in probe_after_s
                if rtt is None or before is None or not _differs(rtt, before):
                    break
                rtt = self.probe(slot)
        finally:
            slot.probing.release()

    def probe(self, slot: RemoteSlot, *, trial: bool = False) -> float | None:
        """Probe ``slot`` now; its round trip in seconds, or ``None`` if it failed."""
        try:
            rtt = slot.remote.ready(timeout=self.probe_timeout_s)
            if slot.est.rtt.count == 0:  # the first one paid for the connection
                rtt = slot.remote.ready(timeout=self.probe_timeout_s)
        except RemoteError:
            with self.lock:
                slot.est.observe_failure()
            slot.breaker.record_failure()
            return None
        with self.lock:
            slot.est.observe_probe(rtt, time.perf_counter())
            self.probes += 1
        if trial:
            slot.breaker.record_success(trial=True)
        return rtt

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
