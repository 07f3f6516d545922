"""The values split computing and offloading share, below both.

A :class:`Placement` says where a request runs (on the device, on a remote, or split at a
cut), an :class:`Option` what running it there is expected to cost, a
:class:`DeviceProfile` the device's energy model both cost options with, and a
:class:`RobustEstimate` the estimator both learn link and server times with.
:class:`LinkEstimates` is what a split placement reads of a remote's live estimates.

The offloader (:mod:`edgeinfer.offload`) decides between options and the split planner
(:mod:`edgeinfer.split`) makes split options; each imports these from here rather than
from the other, so neither package needs the other to say what a placement is. The
offload modules re-export them under their old names (``edgeinfer.offload.policy.Option``
and so on).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "DeviceProfile",
    "LinkEstimates",
    "Measured",
    "Option",
    "Placement",
    "PlacementKind",
    "RobustEstimate",
]

PlacementKind = Literal["local", "remote", "split"]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a request runs: ``kind``, which ``remote`` (index), and a split's ``cut``."""

    kind: PlacementKind
    remote: int | None = None  # index of the remote, for "remote" and "split"
    cut: int | None = None  # "split": index of the cut point; the head runs on the device

    def __str__(self) -> str:
        if self.kind == "local":
            return "local"
        where = f"{self.kind}[{self.remote}]"
        return where if self.cut is None else f"{where}@{self.cut}"


@dataclass(frozen=True, slots=True)
class Option:
    """One placement that could run the request now, with what it is expected to cost."""

    placement: Placement
    latency_s: float | None  # expected seconds end to end; None: not measured yet
    energy_j: float | None = None  # expected device joules; None: not measured yet
    success: float = 1.0  # recent share of answered calls (1.0 for local)
    sends_raw: bool = False  # True if the raw inputs leave the device
    label: str = ""  # for reasons: "local", a remote's URL
    age_s: float = 0.0  # seconds since a real run last refreshed this option's estimate


@dataclass(frozen=True)
class DeviceProfile:
    """The device's energy model (defaults: a phone-class device on Wi-Fi)."""

    name: str = "phone"
    compute_w: float = 2.0  # watts, whole device while the CPU runs a model
    wait_w: float = 0.7  # watts, whole device while waiting on the network (radio on)
    idle_w: float = 0.1  # watts, whole device doing nothing (reported, not charged)
    tx_j_per_byte: float = 5e-7  # joules per byte sent (~60 nJ/bit)
    rx_j_per_byte: float = 2.5e-7  # joules per byte received
    memory_bytes: int | None = None  # bytes of RAM a model may use; None: no limit known

    def local_joules(self, seconds: float) -> float:
        """Energy of running a model locally for ``seconds``."""
        return self.compute_w * seconds

    def remote_joules(self, seconds: float, up_bytes: float, down_bytes: float) -> float:
        """Energy of sending ``up_bytes``, receiving ``down_bytes`` and waiting ``seconds``."""
        return (
            self.tx_j_per_byte * up_bytes + self.rx_j_per_byte * down_bytes + self.wait_w * seconds
        )


class RobustEstimate:
    """Median of the last ``window`` samples, smoothed by an EWMA with weight ``alpha``.

    >>> e = RobustEstimate(window=5, alpha=1.0)
    >>> for x in (10, 11, 500, 9, 10):
    ...     e.add(x, now=0.0)
    >>> e.value
    10.0
    """

    __slots__ = ("_samples", "alpha", "count", "updated", "value")

    def __init__(self, window: int = 7, alpha: float = 0.5) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self.alpha = alpha
        self.value: float | None = None
        self.count = 0
        self.updated = float("-inf")  # clock time of the last sample

    def add(self, sample: float, now: float) -> None:
        self._samples.append(float(sample))
        ordered = sorted(self._samples)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
        if self.value is None:
            self.value = median
        else:
            self.value += self.alpha * (median - self.value)
        self.count += 1
        self.updated = now

    def age(self, now: float) -> float:
        """Seconds since the last sample (``inf`` if none)."""
        return now - self.updated

    def reset(self) -> None:
        self._samples.clear()
        self.value = None
        self.count = 0
        self.updated = float("-inf")


class Measured(Protocol):
    """One live estimate: its current value, ``None`` until something was measured."""

    @property
    def value(self) -> float | None: ...


class LinkEstimates(Protocol):
    """What a split placement reads of one remote's estimates
    (:class:`~edgeinfer.offload.estimate.RemoteEstimates` is one)."""

    @property
    def rtt(self) -> Measured: ...  # seconds

    @property
    def up_bw(self) -> Measured: ...  # bytes/s, client -> server

    @property
    def down_bw(self) -> Measured: ...  # bytes/s, server -> client

    @property
    def success(self) -> float: ...  # recent share of answered calls
