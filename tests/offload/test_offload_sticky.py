"""Holding a clear local decision for a moment (offload/sticky.py), and the Offloader using it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeinfer.offload import Decision, Offloader, OffloaderConfig, RemoteModel, Situation
from edgeinfer.offload.policy import LOCAL, POLICIES, Option, Placement
from edgeinfer.offload.sticky import HOLD_S, MARGIN, stick
from edgeinfer.runtime import Model

REMOTE = Placement("remote", 0)
SIG = ((2, 4),)


def _situation(local_s: float, remote_s: float | None, **kw: object) -> Situation:
    options = [Option(LOCAL, local_s, local_s * 2.0, label="local")]
    if remote_s is not None or kw.pop("unmeasured", False):
        options.append(Option(REMOTE, remote_s, None if remote_s is None else remote_s * 0.5))
    return Situation(tuple(options), **kw)  # type: ignore[arg-type]


def _local() -> Decision:
    return Decision(LOCAL, "local wins")


def test_a_clear_local_win_is_held_until_the_margin_would_shrink() -> None:
    model = object()
    held = stick(POLICIES["latency"], _situation(0.001, 0.1), _local(), SIG, model, 10.0)
    assert held is not None and held.until == pytest.approx(10.0 + HOLD_S)
    # remote: 100x the latency, 25x the energy -> local may grow to 25/MARGIN times
    assert held.bound_s == pytest.approx(0.001 * 25 / MARGIN)
    assert held.holds(SIG, False, model, 10.05, 0.002)
    assert not held.holds(SIG, False, model, 10.0 + HOLD_S, 0.001)  # lapsed
    assert not held.holds(SIG, False, model, 10.05, held.bound_s * 1.01)  # device slowed
    assert not held.holds(((1, 4),), False, model, 10.05, 0.001)  # another signature
    assert not held.holds(SIG, True, model, 10.05, 0.001)  # private now
    assert not held.holds(SIG, False, object(), 10.05, 0.001)  # the model was swapped
    assert not held.holds(SIG, False, model, 10.05, 0.001, deadline=0.5)  # a deadline


@pytest.mark.parametrize(
    ("situation", "policy", "decision"),
    [
        (_situation(0.001, 0.0015), "latency", _local()),  # a close call: decide each time
        (_situation(0.001, None, unmeasured=True), "latency", _local()),  # to be measured
        (_situation(0.001, 0.1, deadline_s=0.5), "latency", _local()),  # a deadline
        (_situation(0.001, 0.1), "latency", Decision(REMOTE, "remote")),  # not local
        (_situation(0.001, 0.1), "deadline", _local()),  # not a holdable policy
    ],
)
def test_what_is_never_held(situation: Situation, policy: str, decision: Decision) -> None:
    assert stick(POLICIES[policy], situation, decision, SIG, object(), 0.0) is None


def test_a_user_policy_is_never_held() -> None:
    def mine(s: Situation) -> Decision:
        return Decision(LOCAL, "mine")

    assert stick(mine, _situation(0.001, 0.1), _local(), SIG, object(), 0.0) is None


def test_the_offloader_holds_a_clear_local_decision_and_drops_it_when_local_slows(
    local: Model, x: np.ndarray
) -> None:
    remote = RemoteModel("http://127.0.0.1:9", "mlp")  # never called: local wins by far
    config = OffloaderConfig(probe_after_s=1e9, explore_after_s=None)
    with Offloader(local, [remote], "latency", config=config) as off:
        est, now = off.estimates(0), time.perf_counter()
        sig = ((x.shape),)
        est.observe_probe(10.0, now)  # a known, far remote
        for _ in range(3):
            est.observe_call(sig, x.size, x.nbytes, x.nbytes + 300, 2000, 10.5, now)
        off.predict(x)  # the first run measures the device
        first = off.predict(x)
        assert first.placement == "local" and off._sticky is not None
        held = off._sticky
        again = off.predict(x)
        assert again.placement == "local" and again.reason == first.reason
        assert off._sticky is held  # decided once, held for the second request
        for _ in range(7):  # the device is now far slower than the remote
            off.local_est.observe(sig, x.size, 60.0, time.perf_counter())
        assert off.decide(x).placement.kind == "remote"
        assert off._sticky is not None and not off._sticky.holds(
            sig, False, local, time.perf_counter(), off.local_est.predict(sig, x.size)
        )
