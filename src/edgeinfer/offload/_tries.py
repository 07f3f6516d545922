"""How the :class:`~edgeinfer.offload.Offloader` runs a request off the device: remote and
split tries bounded by the per-try timeout and the deadline, retries on another remote
within the retry budget, and the local fallback when no remote can answer."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import numpy as np

from edgeinfer.offload.energy import DeviceProfile
from edgeinfer.offload.errors import NoPlacementError, RemoteError
from edgeinfer.offload.estimate import LocalEstimates
from edgeinfer.offload.policy import LOCAL, Decision, Placement
from edgeinfer.offload.pool import RemotePool, RemoteSlot
from edgeinfer.offload.remote import RemoteResult
from edgeinfer.offload.retry import RetryBudget, full_jitter
from edgeinfer.offload.splits import SplitAnswer, SplitPlacements, cut_signature
from edgeinfer.offload.values import OffloaderConfig, OffloadStats, Prediction, _Run

__all__: list[str] = []


class _Tries:
    """The Offloader's running half (a mixin): what it needs of the Offloader is below."""

    config: OffloaderConfig
    device: DeviceProfile
    pool: RemotePool
    budget: RetryBudget
    split: SplitPlacements | None
    stats: OffloadStats
    local_est: LocalEstimates
    _lock: threading.Lock
    _rng: random.Random
    _seen: Any
    _source: Any

    def _run_local(self, run: _Run) -> tuple[dict[str, np.ndarray], float]:
        model = run.model
        if model is None:
            raise NoPlacementError("no local model to run this request on")
        t0 = time.perf_counter()
        out: dict[str, np.ndarray] = model.predict(run.arrays, run.outputs)
        t1 = time.perf_counter()
        with self._lock:
            if model is self._seen or self._source is None:  # not a swapped-out model's time
                self.local_est.observe(run.sig, run.elements, t1 - t0, t1)
            self.stats.local += 1
        return out, self.device.local_joules(t1 - t0)

    def _try_remote(
        self, slot: RemoteSlot, run: _Run, timeout: float, expected: float | None = None
    ) -> RemoteResult:
        """One remote try; what it teaches goes into the estimates and the breaker."""
        with self._lock:
            self.stats.remote_attempts += 1
        try:
            result = slot.remote.infer(run.arrays, run.outputs, timeout=timeout, validated=True)
        except RemoteError as exc:
            self.pool.failed(slot, exc)
            raise
        s = result.stats
        if expected is not None and s.seconds > 2.0 * expected + 0.005:
            self.pool.maybe_probe(slot)  # much slower than predicted: has the RTT changed?
        with self._lock:
            slot.est.observe_call(
                run.sig,
                run.elements,
                run.raw,
                s.up_bytes,
                s.down_bytes,
                s.seconds,
                time.perf_counter(),
                s.server_s,
                s.download_s,
                s.streamed_bytes,
                codec_s=s.codec_s,
            )
        slot.breaker.record_success()
        return result

    def _try_split(
        self, slot: RemoteSlot, cut: int, run: _Run, timeout: float, expected: float | None = None
    ) -> SplitAnswer:
        """One split try (head here, tail on ``slot``), learnt from like a remote try."""
        assert self.split is not None
        with self._lock:
            self.stats.remote_attempts += 1
        try:
            answer = self.split.run(
                slot, cut, run.arrays, run.outputs, private=run.private, timeout=timeout
            )
        except RemoteError as exc:
            self.pool.failed(slot, exc)
            raise
        s = answer.stats
        if s is not None:
            if expected is not None and answer.head_s + s.seconds > 2.0 * expected + 0.005:
                self.pool.maybe_probe(slot)
            with self._lock:
                slot.est.observe_call(
                    cut_signature(run.sig, cut), run.elements, run.raw, s.up_bytes,
                    s.down_bytes, s.seconds, time.perf_counter(), s.server_s, s.download_s,
                    s.streamed_bytes, codec_s=s.codec_s, shared=False,
                )  # fmt: skip
        slot.breaker.record_success()
        return answer

    def _attempt(
        self, placement: Placement, slot: RemoteSlot, run: _Run, timeout: float,
        expected: float | None,
    ) -> tuple[dict[str, np.ndarray], float]:  # fmt: skip
        """One try of ``placement`` through ``slot``: the outputs and the device joules."""
        if placement.kind == "split":
            assert placement.cut is not None
            a = self._try_split(slot, placement.cut, run, timeout, expected)
            return a.outputs, self.device.local_joules(a.head_s) + self.device.remote_joules(
                a.remote_s, a.up_bytes, a.down_bytes
            )
        result = self._try_remote(slot, run, timeout, expected)
        s = result.stats
        return result.outputs, self.device.remote_joules(s.seconds, s.up_bytes, s.down_bytes)

    def _offload(
        self, decision: Decision, run: _Run, reserve: float, decision_latency: float | None
    ) -> Prediction:
        """Remote or split tries within the timeouts, deadline and retry budget; else local.

        A retry may go to another remote: a split keeps its cut, with that remote's tail.
        """
        cfg = self.config
        placement = decision.placement
        assert placement.remote is not None
        slot = self.pool.slots[placement.remote]
        end = None if run.deadline is None else run.start + run.deadline
        attempts, energy = 0, 0.0
        tried: list[RemoteSlot] = []
        error: RemoteError | None = None
        while True:
            now = time.perf_counter()
            timeout = cfg.per_try_timeout_s
            if end is not None:
                room = end - now
                if run.model is not None and room - reserve >= cfg.min_try_s:
                    room -= reserve  # keep time to answer locally if this try fails
                if room < cfg.min_try_s:
                    why = "no time left in the deadline for a remote try"
                    break
                timeout = min(timeout, room)
            attempts += 1
            tried.append(slot)
            try:
                expected = decision_latency if slot is tried[0] else None
                outputs, joules = self._attempt(placement, slot, run, timeout, expected)
            except RemoteError as exc:
                error = exc
                energy += self.device.remote_joules(time.perf_counter() - now, run.raw, 0)
                why, nxt = self._retry(exc, attempts, slot, tried)
                if nxt is None:
                    break
                wait = full_jitter(
                    attempts, cfg.retry.backoff_base_s, cfg.retry.backoff_cap_s, self._rng
                )
                if end is not None:
                    wait = min(wait, max(0.0, end - time.perf_counter() - reserve - cfg.min_try_s))
                if wait > 0:
                    time.sleep(wait)
                slot = nxt
                continue
            done = time.perf_counter()
            with self._lock:
                if placement.kind == "split":
                    self.stats.split += 1
                else:
                    self.stats.remote += 1
            reason = decision.reason
            if slot is not tried[0]:
                reason += f"; {tried[0].label} failed ({error}): answered by {slot.label}"
            where = (
                slot.placement
                if placement.kind == "remote"
                else Placement("split", slot.index, placement.cut)
            )
            return Prediction(
                outputs,
                placement.kind,
                done - run.start,
                reason,
                where,
                remote=slot.label,
                attempts=attempts,
                decision_s=run.decided - run.start,
                energy_j=energy + joules,
            )
        # The remote cannot answer within the limits: the device does.
        failure = f"{error}; {why}" if error is not None else why
        if run.model is None:
            raise NoPlacementError(
                f"no local model, and the server could not answer ({failure})"
            ) from error
        out, local_energy = self._run_local(run)
        with self._lock:
            self.stats.fallbacks += 1
        return Prediction(
            out,
            "local",
            time.perf_counter() - run.start,
            f"{decision.reason}; {placement.kind} failed ({failure}): answered locally",
            LOCAL,
            attempts=attempts,
            fallback=True,
            decision_s=run.decided - run.start,
            energy_j=energy + local_energy,
        )

    def _retry(
        self, exc: RemoteError, attempts: int, slot: RemoteSlot, tried: list[RemoteSlot]
    ) -> tuple[str, RemoteSlot | None]:
        """Whether to retry after ``exc``: (why not, or "") and the remote to retry on."""
        if not exc.retryable:
            return "not retried", None
        if attempts >= self.config.retry.max_attempts:
            return f"gave up after {attempts} tries", None
        nxt = self.pool.next_slot(slot, tried)
        if nxt is None:
            return "no healthy server left to try", None
        if not self.budget.withdraw():
            return "retry budget spent", None
        with self._lock:
            self.stats.retries += 1
        return "", nxt
