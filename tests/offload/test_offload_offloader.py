"""The Offloader against a real server behind the network emulator.

Decisions that depend on latency are driven by estimates the test sets; failures are real
(a blackholed or refused link, an unloaded model, a wrong model name, a closed port).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from offload_helpers import Served

from edgeinfer.errors import InputError
from edgeinfer.netem import NetemProxy
from edgeinfer.offload import (
    BreakerConfig,
    BreakerState,
    Decision,
    NoPlacementError,
    Offloader,
    OffloaderConfig,
    OffloadError,
    RemoteModel,
    RetryConfig,
    Situation,
)
from edgeinfer.runtime import Model

FAST = OffloaderConfig(
    per_try_timeout_s=0.3,
    probe_timeout_s=0.3,
    breaker=BreakerConfig(failures=3, open_s=0.05, max_open_s=0.2),
    retry=RetryConfig(max_attempts=3, backoff_base_s=0.001, backoff_cap_s=0.01),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(served: Served) -> Iterator[NetemProxy]:
    with NetemProxy(served.address) as p:
        yield p


def _make_remote_fast(off: Offloader, x: np.ndarray, local_s: float = 1.0) -> None:
    """Measure the remote for real, then make local look slow (estimates the test controls)."""
    off.calibrate(x, runs=3)
    sig = tuple(a.shape for a in off._validate(x).values())
    for _ in range(7):
        off.local_est.observe(sig, x.size, local_s, time.perf_counter())


def _until(predicate: object, tries: int = 200, pause: float = 0.02) -> bool:
    for _ in range(tries):
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(pause)
    return False


def test_decides_from_the_estimates(served: Served, local: Model, x: np.ndarray) -> None:
    with Offloader(local, [RemoteModel(served.url, "mlp")], config=FAST) as off:
        off.calibrate(x, runs=3)
        assert off.decide(x).placement.kind == "local"  # a tiny model: local wins
        _make_remote_fast(off, x)
        p = off.predict(x)
        assert p.placement == "remote" and p.remote == served.url
        assert p.attempts == 1 and not p.fallback
        assert "latency" in p.reason
        np.testing.assert_allclose(p.outputs["logits"], local.predict(x)["logits"], rtol=1e-6)
        assert p.latency_s > 0 and p.energy_j > 0 and 0 < p.decision_s < p.latency_s


def test_falls_back_to_local_when_the_link_goes_dark(
    proxy: NetemProxy, local: Model, x: np.ndarray
) -> None:
    with Offloader(local, [RemoteModel(proxy.url, "mlp")], config=FAST) as off:
        _make_remote_fast(off, x)
        assert off.predict(x).placement == "remote"
        proxy.outage(None)  # blackhole: tries run into the per-try timeout
        answers = [off.predict(x) for _ in range(5)]
        assert all(p.placement == "local" for p in answers)  # never an error
        assert [p.fallback for p in answers[:3]] == [True, True, True]
        assert "remote failed (no answer in time" in answers[0].reason
        assert off.breaker().state is not BreakerState.CLOSED  # ejected after 3 failures
        assert [p.attempts for p in answers[3:]] == [0, 0]  # no more waiting on it
        proxy.restore()
        # The breaker's trial is a background probe; then the estimates send work back.
        assert _until(lambda: off.predict(x).placement == "remote")
        assert off.stats.fallbacks == 3


def test_refused_connections_are_retried_within_the_budget(
    proxy: NetemProxy, local: Model, x: np.ndarray
) -> None:
    with Offloader(local, [RemoteModel(proxy.url, "mlp")], config=FAST) as off:
        _make_remote_fast(off, x)
        proxy.outage(None, mode="refuse")
        p = off.predict(x)
        assert p.placement == "local" and p.fallback
        assert p.attempts == 3  # refused is retryable: three tries, then local
        assert "gave up after 3 tries" in p.reason
        assert off.budget.retries == 2
        proxy.restore()


def test_an_empty_retry_budget_means_no_retries(
    proxy: NetemProxy, local: Model, x: np.ndarray
) -> None:
    config = OffloaderConfig(
        per_try_timeout_s=0.3,
        breaker=BreakerConfig(failures=100),
        retry=RetryConfig(budget_ratio=0.1, budget_reserve=0.0),
    )
    with Offloader(local, [RemoteModel(proxy.url, "mlp")], config=config) as off:
        _make_remote_fast(off, x)
        proxy.outage(None, mode="refuse")
        answers = [off.predict(x) for _ in range(30)]
        proxy.restore()
    attempts = sum(p.attempts for p in answers)
    assert all(p.placement == "local" for p in answers)
    assert attempts <= 30 * 1.1  # retries never add more than the budget's 10%
    assert "retry budget spent" in answers[0].reason


def test_503_is_retried_and_4xx_never(guarded: Served, local: Model, x: np.ndarray) -> None:
    remote = RemoteModel(guarded.url, "mlp", token="secret")
    with Offloader(local, [remote], config=FAST) as off:
        _make_remote_fast(off, x)
        guarded.admin("unload")
        try:
            p = off.predict(x)
        finally:
            guarded.admin("load")
        assert p.fallback and p.attempts == 3 and "HTTP 503" in p.reason
    wrong = RemoteModel(guarded.url, "mlp", token="wrong")
    with Offloader(local, [wrong], policy="remote", config=FAST) as off:
        p = off.predict(x)
        assert p.fallback and p.attempts == 1 and "HTTP 401" in p.reason


def test_a_failing_remote_is_ejected_and_another_answers(
    served: Served, local: Model, x: np.ndarray
) -> None:
    dead = RemoteModel(f"http://127.0.0.1:{_free_port()}", "mlp")
    alive = RemoteModel(served.url, "mlp")
    with Offloader(local, [dead, alive], policy="remote", config=FAST) as off:
        first = off.predict(x)
        assert first.placement == "remote" and first.remote == served.url
        assert first.attempts == 2 and "answered by" in first.reason
        for _ in range(5):
            assert off.predict(x).remote == served.url
        assert off.breaker(0).state is not BreakerState.CLOSED
        assert off.breaker(1).state is BreakerState.CLOSED


def test_private_inputs_never_reach_the_server(served: Served, local: Model, x: np.ndarray) -> None:
    with Offloader(local, [RemoteModel(served.url, "mlp")], policy="remote", config=FAST) as off:
        assert off.predict(x).placement == "remote"
        before = served.infer_count()
        for _ in range(3):
            p = off.predict(x, private=True)
            assert p.placement == "local" and p.attempts == 0
        assert served.infer_count() == before

        def greedy(s: Situation) -> Decision:
            return Decision(off.remotes and s.options[-1].placement, "always the server")

        off.policy = greedy
        assert off.predict(x, private=True).placement == "local"
        assert served.infer_count() == before


def test_no_local_model_and_no_server_is_a_clear_fast_error(x: np.ndarray) -> None:
    remote = RemoteModel(f"http://127.0.0.1:{_free_port()}", "mlp")
    with Offloader(None, [remote], config=FAST) as off:
        with pytest.raises(NoPlacementError, match="no local model, and no server can be reached"):
            off.predict(x)
        for _ in range(3):
            with pytest.raises(NoPlacementError):
                off.predict(x)
        with pytest.raises(NoPlacementError, match="circuit breakers are open"):
            off.predict(x)  # ejected: raised before any network round trip


def test_no_local_model_uses_the_servers_metadata(served: Served, x: np.ndarray) -> None:
    with Offloader(None, [RemoteModel(served.url, "mlp")], config=FAST) as off:
        p = off.predict(x)
        assert p.placement == "remote"
        with pytest.raises(InputError, match=r"expected float32 \[\?,4\]"):
            off.predict(np.zeros((1, 7), np.float32))
        with pytest.raises(NoPlacementError, match="private"):
            off.predict(x, private=True)


def test_a_deadline_leaves_room_for_the_local_fallback(
    proxy: NetemProxy, local: Model, x: np.ndarray
) -> None:
    config = OffloaderConfig(per_try_timeout_s=30.0, probe_timeout_s=0.3)
    with Offloader(local, [RemoteModel(proxy.url, "mlp")], config=config) as off:
        _make_remote_fast(off, x, local_s=0.05)
        proxy.outage(None)
        p = off.predict(x, deadline=0.3)  # the try gets ~0.25 s, not 30 s
        proxy.restore()
        assert p.placement == "local" and p.fallback


def test_grpc_remote(served: Served, local: Model, x: np.ndarray) -> None:
    remote = RemoteModel(served.grpc_url, "mlp", transport="grpc")
    with Offloader(local, [remote], policy="remote", config=FAST) as off:
        p = off.predict(x)
        assert p.placement == "remote"
        np.testing.assert_allclose(p.outputs["logits"], local.predict(x)["logits"], rtol=1e-6)


def test_a_url_takes_the_local_models_name(served: Served, local: Model, x: np.ndarray) -> None:
    with Offloader(local, served.url, policy="remote", config=FAST) as off:
        assert off.remotes[0].name == local.name
    with pytest.raises(InputError, match="needs a local model"):
        Offloader(None, [served.url])
    with pytest.raises(InputError, match="a local model, at least one remote"):
        Offloader(None, [])


def test_closed_offloader(local: Model, x: np.ndarray) -> None:
    off = Offloader(local)
    assert off.predict(x).placement == "local"
    off.close()
    off.close()
    with pytest.raises(OffloadError, match="closed"):
        off.predict(x)
