"""Which cut to use now: a pure function of a split profile and the current estimates.

For each cut the expected latency is::

    (head_ms + codec_ms) * device_slowdown          compute on the device (the head, and
                                                    HTTP compression when the profile is
                                                    seen over_wire)
    + overhead_ms + rtt_ms                          one remote call (not for local-only)
    + bytes_up * 8 / up_mbps                        upload the crossing tensors
    + tail_ms * server_load                         compute on the server
    + bytes_down * 8 / down_mbps                    download the outputs

Local-only (everything on the device, nothing sent) and remote-only (the raw inputs sent,
everything on the server) are the two extreme cuts, so whole-model placement is one of
the choices, not a separate code path. The device's energy is costed as compute power
while computing, radio power while sending and receiving, and idle power while waiting.
No I/O, no clocks, no randomness: the same inputs always give the same plan.

>>> plan(profile.cuts, Estimates(rtt_ms=5, up_mbps=100, device_slowdown=8)).index  # doctest: +SKIP
3
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

from edgeinfer.errors import InputError
from edgeinfer.split.profile import CutProfile, SplitProfile

__all__ = ["CutCost", "Energy", "Estimates", "Objective", "Plan", "cut_cost", "plan"]

Objective = Literal["latency", "energy"]


@dataclass(frozen=True)
class Estimates:
    """What the device currently believes about itself, the network and the server."""

    rtt_ms: float = 10.0  # network round trip, ms
    up_mbps: float = 10.0  # device -> server bandwidth, Mbit/s
    down_mbps: float = 10.0  # server -> device bandwidth, Mbit/s
    device_slowdown: float = 1.0  # device time / head time in the profile
    server_load: float = 1.0  # server time / tail time in the profile (1: idle server)
    overhead_ms: float = 0.0  # per remote call: encoding, HTTP, server framework, ms

    def measured(
        self,
        *,
        rtt_s: float | None,
        up_bytes_per_s: float | None,
        down_bytes_per_s: float | None,
        device_slowdown: float,
        server_load: float,
    ) -> Estimates:
        """These estimates with what a device measured put in: the round trip in seconds and
        bandwidths in bytes/s, each kept from ``self`` while unmeasured (``None`` or 0)."""

        def mbps(bytes_per_s: float | None, fallback: float) -> float:
            return fallback if not bytes_per_s else bytes_per_s * 8 / 1e6

        return replace(
            self,
            rtt_ms=self.rtt_ms if rtt_s is None else rtt_s * 1e3,
            up_mbps=mbps(up_bytes_per_s, self.up_mbps),
            down_mbps=mbps(down_bytes_per_s, self.down_mbps),
            device_slowdown=device_slowdown,
            server_load=server_load,
        )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            positive = f.name.endswith("mbps") or f.name in ("device_slowdown", "server_load")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"estimate {f.name}={value!r} must be a finite number")
            if value < 0 or (positive and value == 0):
                want = "> 0" if positive else ">= 0"
                raise InputError(f"estimate {f.name}={value!r} must be {want}")


@dataclass(frozen=True)
class Energy:
    """Device power draw in each state, watts (W x ms = mJ)."""

    compute_w: float = 3.0  # running the head
    tx_w: float = 1.5  # radio sending
    rx_w: float = 1.0  # radio receiving
    idle_w: float = 0.3  # waiting for the network round trip and the server


@dataclass(frozen=True)
class CutCost:
    """The expected cost of one cut under one set of estimates."""

    index: int
    kind: str  # "local", "remote" or "split"
    device_ms: float
    network_ms: float  # round trip + per-call overhead
    upload_ms: float
    server_ms: float
    download_ms: float
    latency_ms: float  # the sum of the above
    energy_mj: float  # device energy, mJ
    bytes_up: int


@dataclass(frozen=True)
class Plan:
    """The chosen cut, and what every allowed cut would have cost."""

    objective: str
    chosen: CutCost
    costs: tuple[CutCost, ...]

    @property
    def index(self) -> int:
        return self.chosen.index

    @property
    def kind(self) -> str:
        return self.chosen.kind

    def cost_of(self, index: int) -> CutCost:
        for c in self.costs:
            if c.index == index:
                return c
        raise InputError(f"cut {index} is not among the planned cuts")


def _ms_for(nbytes: int, mbps: float) -> float:
    return nbytes * 8 / (mbps * 1e3)  # bits / (Mbit/s) in ms


def cut_cost(cut: CutProfile, est: Estimates, energy: Energy | None = None) -> CutCost:
    """Expected latency and device energy of ``cut`` under ``est``."""
    power = energy or Energy()
    device = (cut.head_ms + cut.codec_ms) * est.device_slowdown
    if cut.kind == "local":
        network = upload = server = download = 0.0
    else:
        network = est.rtt_ms + est.overhead_ms
        upload = _ms_for(cut.bytes_up, est.up_mbps)
        server = cut.tail_ms * est.server_load
        download = _ms_for(cut.bytes_down, est.down_mbps)
    latency = device + network + upload + server + download
    mj = (
        power.compute_w * device
        + power.tx_w * upload
        + power.rx_w * download
        + power.idle_w * (network + server)
    )
    return CutCost(
        cut.index, cut.kind, device, network, upload, server, download, latency, mj, cut.bytes_up
    )


def plan(
    cuts: SplitProfile | Sequence[CutProfile],
    est: Estimates,
    *,
    objective: Objective = "latency",
    energy: Energy | None = None,
    private_inputs: Collection[str] = (),
    allowed: Collection[int] | None = None,
) -> Plan:
    """The cut with the least expected latency (or device energy).

    ``private_inputs``: model inputs that must not leave the device; cuts that would send
    any of them raw (remote-only, or a cut carrying that input to the tail) are skipped.
    ``allowed``: restrict the choice to these cut indices (say, the tails the server
    hosts). Ties go to the cut sending fewer bytes, then to the earlier cut.
    """
    if objective not in ("latency", "energy"):
        raise InputError(f"objective {objective!r} unknown; expected 'latency' or 'energy'")
    profiles = cuts.cuts if isinstance(cuts, SplitProfile) else tuple(cuts)
    private = set(private_inputs)
    candidates = [
        c
        for c in profiles
        if (allowed is None or c.index in allowed) and not (private & set(c.raw_inputs))
    ]
    if not candidates:
        raise InputError(
            "no cut is allowed: every profiled cut is excluded by allowed= or sends a private "
            "input; profile the local-only cut too"
        )
    costs = tuple(cut_cost(c, est, energy) for c in candidates)

    def key(c: CutCost) -> tuple[float, int, int]:
        value = c.latency_ms if objective == "latency" else c.energy_mj
        return (value, c.bytes_up, c.index)

    return Plan(objective, min(costs, key=key), costs)
