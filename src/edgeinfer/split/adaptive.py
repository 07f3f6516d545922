"""``AdaptiveSplit``: per request, plan the cut from the profile and live estimates, run it.

The estimates are learned from the requests themselves (:class:`LinkLearner`, built on the
offloader's robust estimates): round-trip time from payload-free probes (the OIP ready
endpoint), upload and download bandwidth from each remote call's wire sizes and timings,
the device's slowdown against the profile from each head run, and the server's load from
the server time it reports. While the plan stays local-only nothing is sent, so
every ``explore_every`` local requests one goes through the smallest-upload remote cut to
measure the link again; that is how the cut moves back once the network recovers.

>>> adaptive = AdaptiveSplit("out/split", "http://edge:8000")          # doctest: +SKIP
>>> adaptive.calibrate(x)                                             # doctest: +SKIP
>>> r = adaptive.predict(x); r.cut, r.plan.chosen.latency_ms          # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.errors import InputError
from edgeinfer.placement import RobustEstimate
from edgeinfer.split.planner import Energy, Estimates, Objective, Plan, plan
from edgeinfer.split.profile import PROFILE_FILE, CutProfile, SplitProfile
from edgeinfer.split.runner import SplitModel, SplitResult

__all__ = ["AdaptiveResult", "AdaptiveSplit", "LinkLearner"]

# Head or tail runs shorter than this (in the profile) say more about per-call overhead
# than about the device's speed or the server's load: a 0.1 ms tail that the server
# reports as 1 ms (batching, thread hand-off) would read as a 10x load on every cut.
_MIN_TIMED_MS = 5.0
_MIN_S = 1e-5  # seconds: a transfer faster than this is "unmeasurably fast"
_MAX_UP_RATIO = 4.0  # an upload sample may not exceed this times the download's


class LinkLearner:
    """Planner :class:`Estimates` learned from probes and split runs.

    Each estimate is a :class:`~edgeinfer.placement.RobustEstimate` (median of the
    last ``window`` samples, EWMA-smoothed). The round trip comes from payload-free probes.
    A remote call's transfer time is its total minus the round trip, the server time it
    reports and the client's own compression time; the download bandwidth is timed
    directly where the response streamed over several reads, and the upload gets the rest
    of the transfer time. Without a streamed
    download, one bandwidth is assumed for both directions; a server that reports no
    server time is taken to need the profiled tail time. The device's slowdown comes from
    head runs (of 5 ms or more in the profile: shorter ones measure per-call overhead)
    against the profiled head time, the server's load from the server time it reports
    against the profiled tail time (of tails of 5 ms or more, likewise). Until something
    is measured, ``initial`` stands in.
    """

    def __init__(self, initial: Estimates | None = None, window: int = 7, alpha: float = 0.5):
        self.initial = initial or Estimates()
        self.rtt = RobustEstimate(window, alpha)  # seconds
        self.up_bw = RobustEstimate(window, alpha)  # bytes/s
        self.down_bw = RobustEstimate(window, alpha)  # bytes/s
        self.slowdown = RobustEstimate(window, alpha)
        self.load = RobustEstimate(window, alpha)

    def observe_probe(self, seconds: float) -> None:
        """A payload-free round trip took ``seconds``."""
        self.rtt.add(seconds, time.perf_counter())

    def observe(self, result: SplitResult, cut: CutProfile) -> None:
        """What one request through ``cut`` took."""
        now = time.perf_counter()
        if result.head_s > 0 and cut.head_ms >= _MIN_TIMED_MS:
            self.slowdown.add(max(result.head_s * 1e3 / cut.head_ms, 1e-3), now)
        s = result.stats
        if s is None:
            return
        if s.server_s is not None and cut.tail_ms >= _MIN_TIMED_MS:
            self.load.add(max(s.server_s * 1e3 / cut.tail_ms, 1e-3), now)
        if s.server_s is not None:
            server = max(s.server_s, 0.0)
        else:  # the server did not say: expect the profiled tail time at the current load
            server = cut.tail_ms * (self.load.value or self.initial.server_load) / 1e3
        rtt = self.rtt.value if self.rtt.value is not None else self.initial.rtt_ms / 1e3
        transfer = max(s.seconds - rtt - server - s.codec_s, _MIN_S)
        if s.download_s is not None and s.streamed_bytes > 0 and s.download_s > _MIN_S:
            down_bw = s.streamed_bytes / s.download_s
            self.down_bw.add(down_bw, now)
            up_time = max(transfer - s.down_bytes / down_bw, _MIN_S)
            # A small upload's time is the difference of two noisy numbers; an uplink
            # rarely outruns its downlink, so one sample may not claim more than 4x it.
            self.up_bw.add(min(s.up_bytes / up_time, _MAX_UP_RATIO * down_bw), now)
        else:
            both = (s.up_bytes + s.down_bytes) / transfer
            self.up_bw.add(both, now)
            self.down_bw.add(both, now)

    def estimates(self) -> Estimates:
        """What is believed now: measured values, else the initial ones."""
        base = self.initial
        return base.measured(
            rtt_s=self.rtt.value,
            up_bytes_per_s=self.up_bw.value,
            down_bytes_per_s=self.down_bw.value,
            device_slowdown=self.slowdown.value or base.device_slowdown,
            server_load=self.load.value or base.server_load,
        )


@dataclass(frozen=True)
class AdaptiveResult:
    """A request's outputs, how it ran, and the plan that chose its cut."""

    result: SplitResult
    plan: Plan
    explored: bool  # run on a remote cut to measure the link, not by the plan

    @property
    def outputs(self) -> dict[str, Any]:
        return self.result.outputs

    @property
    def cut(self) -> int:
        return self.result.cut


class AdaptiveSplit:
    """Choose and run a cut per request. ``initial``: estimates used until measured.

    ``cuts``: the cut indices to choose among (default: every cut in the package).
    ``private_inputs``: model inputs that must never leave the device.
    """

    def __init__(
        self,
        package: str | os.PathLike[str],
        url: str,
        *,
        initial: Estimates | None = None,
        objective: Objective = "latency",
        energy: Energy | None = None,
        private_inputs: Collection[str] = (),
        cuts: Collection[int] | None = None,
        explore_every: int | None = 20,  # local-only requests between link measurements
        slowdown: float = 1.0,  # emulate a device this many times slower (netem)
        threads: int | None = None,
        token: str | None = None,
        timeout: float = 10.0,  # seconds per remote call
        compress: str | None = None,  # "zstd" | "gzip" | "deflate": compressed uploads
        window: int = 7,  # samples in each estimate's median (smaller: adapts faster)
        alpha: float = 0.5,  # EWMA weight of a new median
    ) -> None:
        self.root = Path(package)
        # Costed by the bytes that cross: answers come back compressed when the server
        # offers it, uploads when ``compress`` is set.
        self.profile = SplitProfile.load(self.root / PROFILE_FILE).over_wire(
            up=compress is not None, down=True
        )
        self.url = url
        self.initial = initial or Estimates()
        self.objective: Objective = objective
        self.energy = energy
        self.private_inputs = frozenset(private_inputs)
        self.allowed = None if cuts is None else frozenset(cuts)
        if self.allowed is not None:
            for index in self.allowed:
                self.profile.cut(index)  # raises for unknown cuts
        self.explore_every = explore_every
        self._open_args: dict[str, Any] = {
            "token": token, "timeout": timeout, "threads": threads, "slowdown": slowdown,
            "compress": compress,
        }  # fmt: skip
        self.learner = LinkLearner(self.initial, window, alpha)
        self._models: dict[int, SplitModel] = {}
        self._local_streak = 0

    def __enter__(self) -> AdaptiveSplit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model(self, index: int) -> SplitModel:
        """The (cached) :class:`SplitModel` of cut ``index``."""
        if index not in self._models:
            self._models[index] = SplitModel.open(self.root, index, self.url, **self._open_args)
        return self._models[index]

    def estimates(self) -> Estimates:
        """What is believed now (see :class:`LinkLearner`)."""
        return self.learner.estimates()

    def plan(self) -> Plan:
        return plan(
            self.profile, self.estimates(), objective=self.objective, energy=self.energy,
            private_inputs=self.private_inputs, allowed=self.allowed,
        )  # fmt: skip

    def probe(self) -> float:
        """Measure the round trip with a payload-free call; seconds."""
        remote_cut = self._explore_cut()
        tail = self.model(remote_cut).tail
        seconds: float = tail.ready()
        self.learner.observe_probe(seconds)
        return seconds

    def measure_link(self, inputs: Any, calls: int = 2) -> Estimates:
        """Re-measure the link now (three probes, then ``calls`` requests through the
        smallest-upload remote cut), as after a network change; the new estimates."""
        for _ in range(3):
            self.probe()
        index = self._explore_cut()
        for _ in range(calls):
            self.learner.observe(self.model(index).infer(inputs), self.profile.cut(index))
        return self.estimates()

    def calibrate(self, inputs: Any, runs: int = 3) -> None:
        """Probe the link and run every allowed cut ``runs`` times, learning as it goes."""
        for _ in range(runs):
            self.probe()
        indices = [c.index for c in self.profile.cuts if self._allowed(c.index)]
        for _ in range(runs):
            for index in indices:
                self.learner.observe(self.model(index).infer(inputs), self.profile.cut(index))

    def predict(self, inputs: Any, *, timeout: float | None = None) -> AdaptiveResult:
        """Plan, run the chosen cut (or explore), learn from what happened."""
        chosen = self.plan()
        index, explored = chosen.index, False
        if chosen.kind == "local":
            self._local_streak += 1
            if self.explore_every is not None and self._local_streak >= self.explore_every:
                index, explored = self._explore_cut(), True
                self._local_streak = 0
                self.probe()
        else:
            self._local_streak = 0
        result = self.model(index).infer(inputs, timeout=timeout)
        self.learner.observe(result, self.profile.cut(index))
        return AdaptiveResult(result, chosen, explored)

    def close(self) -> None:
        for m in self._models.values():
            m.close()
        self._models.clear()

    # ------------------------------------------------------------------ internals
    def _allowed(self, index: int) -> bool:
        cut = self.profile.cut(index)
        return (self.allowed is None or index in self.allowed) and not (
            self.private_inputs & set(cut.raw_inputs)
        )

    def _explore_cut(self) -> int:
        remote = [c for c in self.profile.cuts if c.kind != "local" and self._allowed(c.index)]
        if not remote:
            raise InputError("no allowed cut sends anything: nothing to measure the link with")
        return min(remote, key=lambda c: (c.bytes_up, c.index)).index
