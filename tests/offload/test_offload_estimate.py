"""Estimators and the energy model: online, robust, and fed numbers the test controls."""

from __future__ import annotations

import pytest

from edgeinfer.offload.energy import Battery, DeviceProfile, system_battery
from edgeinfer.offload.estimate import LocalEstimates, RemoteEstimates, RobustEstimate

SIG = (((1, 4),),)[0]


def test_robust_estimate_ignores_outliers() -> None:
    e = RobustEstimate(window=7, alpha=1.0)
    for x in [10, 10, 11, 9, 10, 500, 10]:
        e.add(x, now=0.0)
    assert e.value == 10


def test_robust_estimate_follows_a_change_within_a_window() -> None:
    e = RobustEstimate(window=7, alpha=0.5)
    for _ in range(20):
        e.add(10.0, now=0.0)
    steps = 0
    while (e.value or 0) < 50:
        e.add(100.0, now=1.0)
        steps += 1
    assert steps <= 6
    assert e.age(3.0) == pytest.approx(2.0)
    e.reset()
    assert e.value is None and e.age(0.0) == float("inf")


def test_local_estimates_per_signature_and_extrapolated() -> None:
    est = LocalEstimates()
    for _ in range(3):
        est.observe(((1, 128),), 128, 0.010, now=0.0)
    assert est.predict(((1, 128),), 128) == pytest.approx(0.010)
    # an unseen size: per-element rate
    assert est.predict(((1, 256),), 256) == pytest.approx(0.020)
    assert LocalEstimates().predict(SIG, 4) is None


def test_remote_estimates_rtt_bandwidth_and_server_time() -> None:
    est = RemoteEstimates(window=5, alpha=1.0)
    assert est.predict(SIG, 4, 16) is None
    for _ in range(5):
        est.observe_probe(0.020, now=0.0)
    # 10 kB up, 5 kB down, 0.020 s RTT, 0.005 s server: 15 kB in 0.015 s = 1 MB/s
    for _ in range(5):
        est.observe_call(SIG, 4, 9_000, 10_000, 5_000, 0.040, now=1.0, server_s=0.005)
    assert est.rtt.value == pytest.approx(0.020)
    assert est.up_bw.value == pytest.approx(1e6)
    assert est.down_bw.value == pytest.approx(1e6)
    assert est.predict(SIG, 4, 9_000) == pytest.approx(0.040)
    assert est.wire_bytes(SIG, 9_000) == (10_000, 5_000)
    # The RTT grows (seen by probes while the remote is unused): the prediction follows.
    for _ in range(5):
        est.observe_probe(0.300, now=2.0)
    assert est.predict(SIG, 4, 9_000) == pytest.approx(0.320)
    # An unseen signature: sizes from the wire ratios, server time per element.
    other = (((2, 4),),)[0]
    up, down = est.wire_bytes(other, 18_000)
    assert up > 18_000 and down == pytest.approx(up / 2, rel=0.01)
    assert est.predict(other, 8, 18_000) is not None


def test_client_compression_time_is_not_network_time() -> None:
    est = RemoteEstimates(window=5, alpha=1.0)
    est.observe_probe(0.020, now=0.0)
    # as above, plus 10 ms this client spent compressing the request and decompressing
    # the answer: the link is still 1 MB/s, and the call still takes 50 ms
    for _ in range(5):
        est.observe_call(
            SIG, 4, 9_000, 10_000, 5_000, 0.050, now=1.0, server_s=0.005, codec_s=0.010
        )
    assert est.up_bw.value == pytest.approx(1e6)
    assert est.predict(SIG, 4, 9_000) == pytest.approx(0.050)


def test_a_slower_link_moves_the_estimate_in_a_few_calls() -> None:
    est = RemoteEstimates(window=7, alpha=0.5)
    est.observe_probe(0.001, now=0.0)
    for _ in range(10):  # 20 kB in 2 ms: 10 MB/s
        est.observe_call(SIG, 4, 16_000, 17_000, 3_000, 0.003, now=1.0)
    fast = est.predict(SIG, 4, 16_000)
    steps = 0
    while (est.predict(SIG, 4, 16_000) or 0) < 0.075:  # the link is now 100x slower
        est.observe_call(SIG, 4, 16_000, 17_000, 3_000, 0.201, now=2.0)
        steps += 1
    assert fast == pytest.approx(0.003)
    assert steps <= 4  # the median flips on the 4th sample; times, not rates, are averaged


def test_a_download_that_streams_is_timed_on_its_own() -> None:
    est = RemoteEstimates(window=3, alpha=1.0)
    est.observe_probe(0.010, now=0.0)
    for _ in range(3):  # 100 kB down streamed in 0.1 s: 1 MB/s down
        est.observe_call(
            SIG, 4, 1_000, 1_000, 116_384, 0.2, now=1.0, download_s=0.1, streamed_bytes=100_000
        )
    assert est.down_bw.value == pytest.approx(1e6)


def test_calls_before_any_rtt_do_not_guess_bandwidth() -> None:
    est = RemoteEstimates()
    est.observe_call(SIG, 4, 16, 400, 300, 0.05, now=0.0)
    assert est.up_bw.value is None
    assert est.predict(SIG, 4, 16) is None  # still unmeasured: the next call measures it


def test_success_rate_moves_with_outcomes() -> None:
    est = RemoteEstimates(success_alpha=0.5)
    est.observe_failure()
    est.observe_failure()
    assert est.success == pytest.approx(0.25)
    est.observe_probe(0.01, now=0.0)
    assert est.success == pytest.approx(0.625)
    assert est.age(1.0) == pytest.approx(1.0)


def test_device_profile_joules() -> None:
    d = DeviceProfile(compute_w=2.0, wait_w=0.5, tx_j_per_byte=1e-6, rx_j_per_byte=5e-7)
    assert d.local_joules(0.1) == pytest.approx(0.2)
    assert d.remote_joules(0.1, 1000, 2000) == pytest.approx(0.05 + 0.001 + 0.001)


def test_battery_from_a_callback_is_cached_and_clamped() -> None:
    calls = []
    now = [0.0]

    def gauge() -> float:
        calls.append(1)
        return 1.7 if len(calls) > 1 else 0.42

    battery = Battery(gauge, refresh_s=10.0, clock=lambda: now[0])
    assert battery.level() == pytest.approx(0.42)
    assert battery.level() == pytest.approx(0.42)
    assert len(calls) == 1
    now[0] = 11.0
    assert battery.level() == 1.0


def test_system_battery_is_a_fraction_or_unknown() -> None:
    level = system_battery()
    assert level is None or 0.0 <= level <= 1.0
