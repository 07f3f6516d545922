"""The Offloader with split placements: the digits CNN's tails on a real ``edgeinfer serve``
on loopback, its heads on the device.

Which placement wins is driven by estimates the test sets (a slow device, a loaded server,
and a profile with known times); the link itself is measured for real. Failures are real:
the link to the server refuses connections.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.bundle import Bundle
from edgeinfer.netem import NetemProxy
from edgeinfer.offload import (
    BreakerConfig,
    Offloader,
    OffloaderConfig,
    RemoteModel,
    RetryConfig,
)
from edgeinfer.offload.policy import get_policy
from edgeinfer.offload.splits import cut_signature
from edgeinfer.runtime import Model, load
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.server import BackgroundServer
from edgeinfer.split import SplitProfile, SplitSet, cut_points, select_cuts
from edgeinfer.split.package import SplitPackage, write_split

FAST = OffloaderConfig(
    per_try_timeout_s=0.5,
    probe_timeout_s=0.5,
    breaker=BreakerConfig(failures=3, open_s=0.05, max_open_s=0.2),
    retry=RetryConfig(max_attempts=2, backoff_base_s=0.001, backoff_cap_s=0.005),
)


@pytest.fixture(scope="module")
def package(
    digits_cnn: Path, digits_x: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> SplitPackage:
    root = tmp_path_factory.mktemp("split-offload")
    source = Bundle.create(digits_cnn, root / "src", name="digits", golden_inputs=digits_x[:2])
    return write_split(source, select_cuts(cut_points(digits_cnn), 4), root / "out", repeats=2)


@pytest.fixture(scope="module")
def server(package: SplitPackage) -> Iterator[BackgroundServer]:
    config = ServeConfig(package.repository, port=0, grpc_port=None, poll_interval_s=None)
    with BackgroundServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def local(digits_cnn: Path) -> Iterator[Model]:
    with load(digits_cnn, providers=["cpu"]) as m:
        yield m


def _known_profile(profile: SplitProfile) -> SplitProfile:
    """The measured profile with round times: local-only 10 ms on the profiling host, each
    split cut's head and tail 1 ms, remote-only's tail 10 ms (bytes stay as measured)."""
    cuts = []
    for c in profile.cuts:
        if c.kind == "local":
            cuts.append(dataclasses.replace(c, head_ms=10.0))
        elif c.kind == "remote":
            cuts.append(dataclasses.replace(c, tail_ms=10.0))
        else:
            cuts.append(dataclasses.replace(c, head_ms=1.0, tail_ms=1.0))
    return dataclasses.replace(profile, cuts=tuple(cuts))


def _offloader(package: SplitPackage, local: Model, url: str, policy: str = "latency") -> Offloader:
    root = package.profile_path.parent
    profile = _known_profile(package.profile)
    whole = next(c for c in profile.cuts if c.kind == "remote")
    # the remote-only cut's tail is the whole model: the server hosts it beside the tails
    remote = RemoteModel(url, SplitSet.open(root).tail_name(whole.index))
    return Offloader(local, remote, policy, split=SplitSet(root, profile), config=FAST)


def _sig(x: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return ((x.shape),)


def _slow_device(off: Offloader, x: np.ndarray, seconds: float = 1.0) -> None:
    for _ in range(7):
        off.local_est.observe(_sig(x), x.size, seconds, time.perf_counter())


def _loaded_server(off: Offloader, x: np.ndarray, server_s: float = 0.5) -> None:
    """The server now takes ``server_s`` for the whole model (it is busy)."""
    est = off.estimates(0)
    rtt = est.rtt.value or 0.0
    up, down = est.wire_bytes(_sig(x), x.nbytes)
    for _ in range(7):
        est.observe_call(
            _sig(x), x.size, x.nbytes, up, down, rtt + server_s + 1e-4, time.perf_counter(),
            server_s,
        )  # fmt: skip


def test_split_chosen_when_the_estimates_favour_it(
    package: SplitPackage, server: BackgroundServer, local: Model, digits_x: np.ndarray
) -> None:
    x = digits_x[:8]
    want = local.predict({"pixels": x})["logits"]
    with _offloader(package, local, server.url) as off:
        off.calibrate({"pixels": x}, runs=2)
        for cut in off.split.cuts if off.split else ():  # each measured through the server
            assert off.estimates(0).observed(cut_signature(_sig(x), cut)) is not None
        _slow_device(off, x)  # the device is 100x the profiling host: 1 s locally
        _loaded_server(off, x)  # the server is 50x: 0.5 s for the whole model
        situation = off.situation({"pixels": x})
        kinds = {o.placement.kind for o in situation.options}
        assert kinds == {"local", "remote", "split"}
        cuts = {o.placement.cut for o in situation.options if o.placement.kind == "split"}
        assert cuts == {c.index for c in package.profile.cuts if c.kind == "split"}
        for _ in range(3):
            p = off.predict({"pixels": x})
            assert p.placement == "split" and p.where.kind == "split", p.reason
            assert p.where.remote == 0 and p.where.cut in cuts
            assert p.remote == server.url and p.energy_j > 0 and not p.fallback
            assert float(np.abs(p.outputs["logits"] - want).max()) <= 1e-5
        assert off.stats.fallbacks == 0


def test_private_uses_split_never_the_whole_remote(
    package: SplitPackage, server: BackgroundServer, local: Model, digits_x: np.ndarray
) -> None:
    x = digits_x[:8]
    want = local.predict({"pixels": x})["logits"]
    with _offloader(package, local, server.url) as off:
        off.calibrate({"pixels": x}, runs=2)
        _slow_device(off, x)  # a slow device and an idle server: the whole model offloads
        assert off.predict({"pixels": x}).placement == "remote"
        decision = off.decide({"pixels": x}, private=True)
        assert decision.placement.kind == "split"
        for policy in ("latency", "energy", "remote"):
            off.policy = get_policy(policy)
            for _ in range(2):
                p = off.predict({"pixels": x}, private=True)
                assert p.placement == "split", (policy, p.reason)
                cut = package.profile.cut(p.where.cut or 0)
                assert cut.raw_inputs == ()  # only features left the device
                assert float(np.abs(p.outputs["logits"] - want).max()) <= 1e-5
        # with the link unmeasured, exploration of a private request still keeps pixels here
        fresh = _offloader(package, local, server.url)
        with fresh:
            _slow_device(fresh, x)
            p = fresh.predict({"pixels": x}, private=True)
            assert p.placement in ("split", "local") and p.where.kind != "remote"


def test_a_split_cut_that_carries_raw_inputs_is_closed_to_private_requests(
    package: SplitPackage, server: BackgroundServer, local: Model, digits_x: np.ndarray
) -> None:
    root = package.profile_path.parent
    profile = _known_profile(package.profile)
    first = next(c for c in profile.cuts if c.kind == "split")
    leaky = dataclasses.replace(
        profile,
        cuts=tuple(
            dataclasses.replace(c, raw_inputs=("pixels",)) if c is first else c
            for c in profile.cuts
        ),
    )
    whole = next(c for c in profile.cuts if c.kind == "remote")
    name = SplitSet.open(root).tail_name(whole.index)
    x = digits_x[:4]
    with Offloader(
        local, RemoteModel(server.url, name), split=SplitSet(root, leaky), config=FAST
    ) as off:
        off.calibrate({"pixels": x}, runs=1)
        options = off.situation({"pixels": x}, private=True).options
        raw = [o for o in options if o.sends_raw]
        assert {o.placement.cut for o in raw if o.placement.kind == "split"} == {first.index}
        for _ in range(4):
            p = off.predict({"pixels": x}, private=True)
            assert p.where.kind != "remote" and p.where.cut != first.index
    with Offloader(
        local,
        RemoteModel(server.url, name),
        split=SplitSet(root, leaky),
        split_public_inputs=["pixels"],
        config=FAST,
    ) as off:
        off.calibrate({"pixels": x}, runs=1)
        options = off.situation({"pixels": x}, private=True).options
        assert all(not o.sends_raw for o in options if o.placement.kind == "split")


def test_falls_back_to_local_when_the_tail_server_is_down(
    package: SplitPackage, server: BackgroundServer, local: Model, digits_x: np.ndarray
) -> None:
    x = digits_x[:8]
    want = local.predict({"pixels": x})["logits"]
    with (
        NetemProxy(f"127.0.0.1:{server.port}") as proxy,
        _offloader(package, local, proxy.url) as off,
    ):
        off.calibrate({"pixels": x}, runs=2)
        _slow_device(off, x)
        assert off.predict({"pixels": x}, private=True).placement == "split"
        proxy.outage(None, mode="refuse")
        p = off.predict({"pixels": x}, private=True)
        assert p.placement == "local" and p.fallback and p.attempts >= 1
        assert "split failed" in p.reason
        assert float(np.abs(p.outputs["logits"] - want).max()) <= 1e-5
        for _ in range(5):  # the breaker opens; requests keep being answered here
            p = off.predict({"pixels": x}, private=True)
            assert p.placement == "local"
            assert float(np.abs(p.outputs["logits"] - want).max()) <= 1e-5
        assert off.stats.fallbacks >= 1
        proxy.restore()


def test_split_needs_a_remote(package: SplitPackage, local: Model) -> None:
    from edgeinfer.errors import InputError

    with pytest.raises(InputError, match="need a remote"):
        Offloader(local, split=package.profile_path.parent)


def test_split_is_a_split_set_not_a_path(package: SplitPackage, local: Model) -> None:
    from edgeinfer.errors import InputError

    with (
        RemoteModel("http://127.0.0.1:9", "digits") as remote,  # never called
        pytest.raises(InputError, match=r"expected a SplitSet, not a path; .*SplitSet\.open"),
    ):
        Offloader(local, remote, split=package.profile_path.parent)
