"""Placement policies as the pure functions they are: a Situation in, a Decision out."""

from __future__ import annotations

import pytest

from edgeinfer.errors import InputError
from edgeinfer.offload.errors import NoPlacementError
from edgeinfer.offload.policy import (
    POLICIES,
    Decision,
    Option,
    Placement,
    Situation,
    battery_threshold,
    deadline,
    decide,
    energy,
    get_policy,
    latency,
    local,
    memory_budget,
    remote,
)

LOCAL = Placement("local")
R0 = Placement("remote", 0)
R1 = Placement("remote", 1)


def opt(p: Placement, lat: float | None, joules: float | None = None) -> Option:
    return Option(p, lat, joules if joules is not None else lat, 1.0, p.kind == "remote", str(p))


def sit(*options: Option, **kw: object) -> Situation:
    return Situation(tuple(options), **kw)  # type: ignore[arg-type]


def test_placement_names_and_a_split_fits_the_same_type() -> None:
    assert str(LOCAL) == "local"
    assert str(R1) == "remote[1]"
    split = Placement("split", remote=0, cut=3)
    assert str(split) == "split[0]@3"
    assert split != R0


def test_latency_picks_the_fastest() -> None:
    d = latency(sit(opt(LOCAL, 0.050), opt(R0, 0.020), opt(R1, 0.030)))
    assert d.placement == R0
    assert "20.0 ms" in d.reason and "local 50.0 ms" in d.reason
    assert latency(sit(opt(LOCAL, 0.010), opt(R0, 0.020))).placement == LOCAL


def test_unmeasured_options_are_measured_first_local_first() -> None:
    d = latency(sit(opt(LOCAL, None), opt(R0, None)))
    assert d.placement == LOCAL
    assert "measuring" in d.reason
    assert latency(sit(opt(LOCAL, 0.01), opt(R0, None))).placement == R0


def test_energy_picks_the_fewest_joules_not_the_fastest() -> None:
    d = energy(sit(opt(LOCAL, 0.010, joules=0.5), opt(R0, 0.050, joules=0.1)))
    assert d.placement == R0
    assert "J" in d.reason


def test_deadline_least_energy_among_those_that_meet_it() -> None:
    options = (opt(LOCAL, 0.200, 0.40), opt(R0, 0.050, 0.10), opt(R1, 0.080, 0.05))
    assert deadline(sit(*options, deadline_s=0.1)).placement == R1  # cheapest that meets it
    assert deadline(sit(*options, deadline_s=0.06)).placement == R0  # only R0 meets it
    late = deadline(sit(*options, deadline_s=0.01))
    assert late.placement == R0 and "nothing meets it" in late.reason  # fastest instead
    assert deadline(sit(*options)).placement == R1  # no deadline: least energy


def test_local_and_remote_policies() -> None:
    both = sit(opt(LOCAL, 0.5), opt(R0, 0.02), opt(R1, 0.01))
    assert local(both).placement == LOCAL
    assert remote(both).placement == R1  # the fastest server
    assert remote(sit(opt(LOCAL, 0.5))).placement == LOCAL
    assert local(sit(opt(R0, 0.1))).placement == R0  # no local model


def test_battery_threshold_prefers_offloading_when_low() -> None:
    policy = battery_threshold(0.2)
    options = (opt(LOCAL, 0.010), opt(R0, 0.050))
    low = policy(sit(*options, battery=0.15))
    assert low.placement == R0 and "battery 15% < 20%" in low.reason
    assert policy(sit(*options, battery=0.9)).placement == LOCAL
    assert policy(sit(*options, battery=None)).placement == LOCAL  # unknown: not low
    with pytest.raises(InputError, match="fraction"):
        battery_threshold(20)


def test_memory_budget_sends_a_model_too_big_for_the_device_away() -> None:
    policy = memory_budget(50_000_000)
    options = (opt(LOCAL, 0.010), opt(R0, 0.050))
    big = policy(sit(*options, model_bytes=90_000_000))
    assert big.placement == R0 and "budget" in big.reason
    assert policy(sit(*options, model_bytes=1_000)).placement == LOCAL
    assert policy(sit(*options)).placement == LOCAL  # size unknown: decide as usual


def test_private_inputs_never_get_a_raw_remote_option() -> None:
    seen: list[Situation] = []

    def spy(s: Situation) -> Decision:
        seen.append(s)
        return remote(s)

    d = decide(spy, sit(opt(LOCAL, 0.5), opt(R0, 0.01), private=True))
    assert d.placement == LOCAL
    assert [o.placement for o in seen[0].options] == [LOCAL]


def test_a_user_policy_cannot_send_private_inputs_away() -> None:
    def stubborn(s: Situation) -> Decision:
        return Decision(R0, "I insist")

    d = decide(stubborn, sit(opt(LOCAL, 0.5), opt(R0, 0.01), private=True))
    assert d.placement == LOCAL
    assert "private" in d.reason


def test_a_split_option_sends_no_raw_inputs_so_private_may_use_it() -> None:
    split = Option(Placement("split", 0, cut=2), 0.02, 0.01, 1.0, sends_raw=False)
    d = decide(latency, sit(opt(LOCAL, 0.5), opt(R0, 0.01), split, private=True))
    assert d.placement == Placement("split", 0, cut=2)


def test_nowhere_to_run_is_a_clear_error() -> None:
    with pytest.raises(NoPlacementError, match="private and there is no local model"):
        decide(latency, sit(opt(R0, 0.01), private=True))
    with pytest.raises(NoPlacementError, match="no local model and no server"):
        decide(latency, sit())


def test_a_user_policy_must_choose_an_available_placement() -> None:
    def wrong(s: Situation) -> Decision:
        return Decision(R1, "the second server")

    with pytest.raises(InputError, match=r"chose remote\[1\].*local, remote\[0\]"):
        decide(wrong, sit(opt(LOCAL, 0.5), opt(R0, 0.01)))


def test_get_policy() -> None:
    assert get_policy("energy") is energy
    assert get_policy(latency) is latency
    assert set(POLICIES) == {"local", "remote", "latency", "energy", "deadline"}
    with pytest.raises(InputError, match="unknown policy 'fastest'"):
        get_policy("fastest")


def test_a_close_runner_up_with_an_old_estimate_is_measured_again() -> None:
    fresh = Option(R0, 0.012, 0.01, 1.0, True, "edge", age_s=0.5)
    old = Option(R0, 0.012, 0.01, 1.0, True, "edge", age_s=30.0)
    far = Option(R0, 0.100, 0.01, 1.0, True, "edge", age_s=30.0)
    local_opt = Option(LOCAL, 0.010, 0.02, 1.0, False, "local")
    assert latency(sit(local_opt, fresh)).placement == LOCAL
    d = latency(sit(local_opt, old))
    assert d.placement == R0 and "re-measuring edge" in d.reason
    assert latency(sit(local_opt, far)).placement == LOCAL  # not close: not worth a request
    assert energy(sit(local_opt, old)).placement == R0  # already the cheapest in joules
