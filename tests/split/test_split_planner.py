"""The planner: a pure function of a profile and estimates, checked case by case."""

from __future__ import annotations

import pytest

from edgeinfer.errors import InputError
from edgeinfer.split import CutProfile, Energy, Estimates, cut_cost, plan

IMAGE = 600_000  # bytes of a raw input
OUT = 400  # bytes of the outputs


def cp(
    index: int, kind: str, up: int, head: float, tail: float, raw: tuple[str, ...] = ()
) -> CutProfile:
    down = 0 if kind == "local" else OUT
    return CutProfile(index, index * 10, kind, (f"t{index}",), raw, up, down, head, tail)


# A detector-like profile: early layers shrink the data, late layers are heavy.
CUTS = (
    cp(0, "remote", IMAGE, 0.0, 30.0, raw=("image",)),
    cp(1, "split", 150_000, 1.0, 29.0),  # early: still big
    cp(2, "split", 20_000, 6.0, 24.0),  # middle: small features
    cp(3, "split", 40_000, 20.0, 10.0),  # late
    cp(4, "local", 0, 30.0, 0.0),
)


def test_high_bandwidth_sends_everything() -> None:
    chosen = plan(CUTS, Estimates(rtt_ms=1, up_mbps=10_000, down_mbps=10_000, device_slowdown=8))
    assert chosen.index == 0 and chosen.kind == "remote"


def test_tiny_bandwidth_stays_local() -> None:
    chosen = plan(CUTS, Estimates(rtt_ms=20, up_mbps=0.05, down_mbps=0.05, device_slowdown=16))
    assert chosen.index == 4 and chosen.kind == "local"
    assert chosen.chosen.latency_ms == pytest.approx(30.0 * 16)


def test_middle_bandwidth_picks_a_middle_cut() -> None:
    chosen = plan(CUTS, Estimates(rtt_ms=5, up_mbps=20, down_mbps=20, device_slowdown=8))
    assert chosen.kind == "split" and chosen.index == 2
    # remote: 5 + 240 + 30 + 0.16 ; middle: 48 + 5 + 8 + 24 + 0.16 ; local: 240
    assert chosen.cost_of(0).latency_ms == pytest.approx(5 + 240 + 30 + 0.16)
    assert chosen.chosen.latency_ms == pytest.approx(48 + 5 + 8 + 24 + 0.16)
    assert chosen.cost_of(4).latency_ms == pytest.approx(240)


def test_cut_moves_later_as_bandwidth_falls() -> None:
    picks = [
        plan(CUTS, Estimates(rtt_ms=5, up_mbps=bw, down_mbps=bw, device_slowdown=4)).index
        for bw in (10_000, 100, 20, 5, 0.5)
    ]
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == 4
    assert any(0 < p < 4 for p in picks)


def test_loaded_server_keeps_work_on_the_device() -> None:
    est = Estimates(rtt_ms=5, up_mbps=20, down_mbps=20, device_slowdown=2)
    idle = plan(CUTS, est).index
    busy = plan(CUTS, Estimates(**{**est.__dict__, "server_load": 20})).index
    assert busy > idle and busy == 4


def test_cost_breakdown() -> None:
    est = Estimates(rtt_ms=10, up_mbps=8, down_mbps=4, device_slowdown=3, overhead_ms=2)
    c = cut_cost(CUTS[2], est)
    assert (c.device_ms, c.network_ms) == (18.0, 12.0)
    assert c.upload_ms == pytest.approx(20_000 * 8 / 8_000)
    assert c.download_ms == pytest.approx(OUT * 8 / 4_000)
    assert c.latency_ms == pytest.approx(18 + 12 + 20 + 24 + 0.8)
    local = cut_cost(CUTS[4], est)
    assert local.latency_ms == 90.0 and local.network_ms == local.upload_ms == 0.0


def test_compression_work_is_device_compute() -> None:
    """Seen over a compressing transport, a cut carries the device's codec time, which a
    slower device spends slower, like its head."""
    import dataclasses

    est = Estimates(rtt_ms=10, up_mbps=8, down_mbps=4, device_slowdown=3)
    packed = dataclasses.replace(CUTS[2], packed_up=5_000, packed_up_ms=2.0, packed_down_ms=0.5)
    raw = cut_cost(packed.over_wire(up=False, down=False), est)
    wire = cut_cost(packed.over_wire(up=True, down=True), est)
    assert raw.device_ms == 18.0
    assert wire.device_ms == pytest.approx(18.0 + 3 * 2.5)
    assert wire.upload_ms == pytest.approx(5_000 * 8 / 8_000)
    assert packed.over_wire(up=True, down=False).codec_ms == 2.0


def test_energy_objective_prefers_the_radio_when_compute_is_costly() -> None:
    est = Estimates(rtt_ms=5, up_mbps=50, down_mbps=50, device_slowdown=10)
    power = Energy(compute_w=5.0, tx_w=0.5, rx_w=0.5, idle_w=0.05)
    by_energy = plan(CUTS, est, objective="energy", energy=power)
    assert by_energy.chosen.energy_mj == min(c.energy_mj for c in by_energy.costs)
    assert by_energy.index == 0
    costly_radio = Energy(compute_w=0.5, tx_w=200.0, rx_w=200.0, idle_w=0.05)
    assert plan(CUTS, est, objective="energy", energy=costly_radio).index == 4


def test_private_inputs_never_leave() -> None:
    est = Estimates(rtt_ms=1, up_mbps=10_000, down_mbps=10_000, device_slowdown=8)
    assert plan(CUTS, est).index == 0
    private = plan(CUTS, est, private_inputs={"image"})
    assert private.index != 0 and all(c.index != 0 for c in private.costs)


def test_allowed_restricts_the_choice() -> None:
    est = Estimates(rtt_ms=5, up_mbps=20, down_mbps=20, device_slowdown=8)
    assert plan(CUTS, est, allowed={0, 4}).index in (0, 4)
    with pytest.raises(InputError, match="no cut is allowed"):
        plan(CUTS, est, allowed={99})


def test_ties_prefer_fewer_bytes() -> None:
    cuts = (cp(0, "remote", 1000, 0.0, 10.0), cp(1, "local", 0, 10.0, 0.0))
    assert plan(cuts, Estimates(rtt_ms=0, up_mbps=1e12, down_mbps=1e12)).index == 1


def test_pure_and_deterministic() -> None:
    est = Estimates(rtt_ms=5, up_mbps=20, down_mbps=20, device_slowdown=8)
    assert plan(CUTS, est) == plan(list(CUTS), est)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("up_mbps", 0, "up_mbps=0 must be > 0"),
        ("rtt_ms", -1, "rtt_ms=-1 must be >= 0"),
        ("device_slowdown", float("nan"), "finite"),
        ("server_load", 0, "must be > 0"),
    ],
)
def test_bad_estimates(field: str, value: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Estimates(**{field: value})


def test_bad_objective() -> None:
    with pytest.raises(InputError, match="objective 'speed' unknown"):
        plan(CUTS, Estimates(), objective="speed")  # type: ignore[arg-type]
