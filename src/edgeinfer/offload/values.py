"""The Offloader's value types: its configuration, one request's run, the
:class:`Prediction` it returns, and its counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeinfer.offload.breaker import BreakerConfig
from edgeinfer.offload.estimate import Signature
from edgeinfer.offload.policy import Placement, PlacementKind
from edgeinfer.offload.retry import RetryConfig

__all__ = ["OffloadStats", "OffloaderConfig", "Prediction"]


@dataclass(frozen=True)
class OffloaderConfig:
    """Timeouts, retries, breakers and how estimates are kept fresh."""

    per_try_timeout_s: float = 1.0  # seconds one remote try may take
    min_try_s: float = 0.002  # seconds: a remote try with less room is not made
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    probe_after_s: float = 2.0  # seconds: an older RTT estimate is refreshed by a probe
    probe_timeout_s: float = 0.5  # seconds a probe (ready endpoint) may take
    explore_after_s: float | None = 30.0  # seconds after which an unused placement counts
    # as unmeasured and one real request measures it again (None: never), so a network that
    # recovered is noticed even when it is not a close call
    window: int = 7  # samples in each estimate's median
    alpha: float = 0.5  # EWMA weight of a new median


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer to one request, where it ran and why."""

    outputs: dict[str, np.ndarray]
    placement: PlacementKind  # where it actually ran: "local", "remote" or "split"
    latency_s: float  # seconds from predict() called to answer
    reason: str  # why it ran there (the policy's reason, and any fallback)
    where: Placement  # the full placement: which remote, which cut
    remote: str | None = None  # URL of the remote that answered (a split's tail included)
    attempts: int = 0  # remote tries made for this request
    fallback: bool = False  # the chosen remote could not answer; the device did
    decision_s: float = 0.0  # seconds spent validating and deciding
    energy_j: float = 0.0  # modelled device energy of this request (see energy.py)


@dataclass
class OffloadStats:
    """Counters since the offloader was made."""

    requests: int = 0
    local: int = 0  # local runs (fallbacks and calibration included)
    remote: int = 0  # requests answered remotely (whole model)
    split: int = 0  # requests answered by a split (head here, tail remote)
    swaps: int = 0  # times the local model changed (hot swap)
    fallbacks: int = 0  # remote chosen, local answered
    remote_attempts: int = 0  # remote tries (retries included)
    retries: int = 0


class _Run:
    """One request's inputs, their signature and sizes, and its clock."""

    __slots__ = (
        "arrays", "deadline", "decided", "elements", "model", "outputs", "private", "raw",
        "sig", "start",
    )  # fmt: skip

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        start: float,
        deadline: float | None,
        model: Any = None,  # the local model this request uses to its end (None: none)
        private: bool = False,
    ) -> None:
        self.arrays = arrays
        self.model = model
        self.private = private
        self.outputs = outputs
        self.start = start
        self.decided = start
        self.deadline = deadline
        values = arrays.values()
        self.sig: Signature = tuple([a.shape for a in values])
        self.elements = sum([a.size for a in values])
        self.raw = sum([a.nbytes for a in values])
