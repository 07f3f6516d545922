"""LinkLearner: what a device believes after its own split calls (no network needed)."""

from __future__ import annotations

import pytest

from edgeinfer.offload.transport import CallStats
from edgeinfer.split import CutProfile, Estimates
from edgeinfer.split.adaptive import LinkLearner
from edgeinfer.split.runner import SplitResult


def _cut(head_ms: float, tail_ms: float) -> CutProfile:
    return CutProfile(
        index=3, position=3, kind="split", tensors=("t",), raw_inputs=(),
        bytes_up=100_000, bytes_down=10_000, head_ms=head_ms, tail_ms=tail_ms,
    )  # fmt: skip


def _result(head_s: float, seconds: float, server_s: float) -> SplitResult:
    stats = CallStats(seconds, up_bytes=100_000, down_bytes=10_000, server_s=server_s)
    return SplitResult({}, 3, "split", head_s, seconds, 100_000, 10_000, head_s + seconds, stats)


def test_load_and_slowdown_are_learned_from_runs_long_enough_to_time() -> None:
    learner = LinkLearner(Estimates(rtt_ms=10))
    learner.observe_probe(0.010)
    for _ in range(3):
        learner.observe(_result(head_s=0.080, seconds=0.060, server_s=0.020), _cut(10.0, 10.0))
    est = learner.estimates()
    assert est.device_slowdown == pytest.approx(8.0)
    assert est.server_load == pytest.approx(2.0)
    # transfer = 60 - 10 (RTT) - 20 (server) = 30 ms for 110 kB: ~29 Mbit/s both ways
    assert est.up_mbps == pytest.approx(110_000 * 8 / 0.030 / 1e6)


def test_a_tiny_tail_does_not_teach_a_server_load() -> None:
    """A 0.1 ms tail the server reports as 1.5 ms is per-call overhead, not a 15x load."""
    learner = LinkLearner(Estimates(server_load=1.0, device_slowdown=4.0))
    for _ in range(3):
        learner.observe(_result(head_s=0.0004, seconds=0.030, server_s=0.0015), _cut(0.1, 0.1))
    est = learner.estimates()
    assert est.server_load == 1.0 and est.device_slowdown == 4.0
