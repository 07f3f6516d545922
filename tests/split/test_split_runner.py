"""Head on this device, tail on a real ``edgeinfer serve`` on loopback (behind netem)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.bundle import Bundle
from edgeinfer.errors import InputError
from edgeinfer.netem import NetemProxy
from edgeinfer.runtime import load
from edgeinfer.serve.config import BatchConfig, ServeConfig
from edgeinfer.serve.server import BackgroundServer
from edgeinfer.split import Estimates, cut_points, select_cuts
from edgeinfer.split.adaptive import AdaptiveSplit
from edgeinfer.split.package import SplitPackage, write_split
from edgeinfer.split.runner import SplitModel


@pytest.fixture(scope="module")
def package(
    res_cnn: Path, digits_x: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> SplitPackage:
    root = tmp_path_factory.mktemp("split-pkg")
    source = Bundle.create(res_cnn, root / "src", name="res-cnn", golden_inputs=digits_x[:2])
    return write_split(source, select_cuts(cut_points(res_cnn), 4), root / "out", repeats=2)


# A device sends its whole batch in one request (up to 128 digits here); the server takes
# at most max_batch_size rows per request.
BATCHING = BatchConfig(max_batch_size=128, max_queue_size=256)


@pytest.fixture(scope="module")
def server(package: SplitPackage) -> Iterator[BackgroundServer]:
    config = ServeConfig(
        package.repository, port=0, grpc_port=None, poll_interval_s=None, batching=BATCHING
    )
    with BackgroundServer(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def want(res_cnn: Path, digits_x: np.ndarray) -> np.ndarray:
    with load(res_cnn) as full:
        out: np.ndarray = full.predict({"pixels": digits_x})["logits"]
    return out


def test_every_cut_through_the_server(
    package: SplitPackage, server: BackgroundServer, digits_x: np.ndarray, want: np.ndarray
) -> None:
    root = package.profile_path.parent
    for cut in package.profile.cuts:
        with SplitModel.open(root, cut.index, server.url) as split:
            r = split.infer({"pixels": digits_x})
            assert r.cut == cut.index and r.kind == cut.kind
            assert float(np.abs(r.outputs["logits"] - want).max()) <= 1e-5
            if cut.kind == "local":
                assert r.up_bytes == r.down_bytes == 0 and r.stats is None
            else:
                assert r.up_bytes >= cut.bytes_up and r.stats is not None
            if cut.kind == "remote":
                assert r.head_s == 0 and split.raw_inputs == ("pixels",)


def test_compressed_split_calls_send_fewer_bytes(
    package: SplitPackage, server: BackgroundServer, digits_x: np.ndarray, want: np.ndarray
) -> None:
    root = package.profile_path.parent
    x = np.tile(digits_x, (4, 1, 1, 1))  # 128 digits: 32 KiB of pixels to send
    remote = package.profile.cuts[0]
    sizes = {}
    for compress in (None, "zstd"):
        with SplitModel.open(root, remote.index, server.url, compress=compress) as split:
            r = split.infer({"pixels": x})
        np.testing.assert_allclose(r.outputs["logits"], np.tile(want, (4, 1)), atol=1e-5)
        sizes[compress] = r.up_bytes
    assert sizes["zstd"] < sizes[None] / 3


def test_private_inputs_stay_on_the_device(
    package: SplitPackage, server: BackgroundServer, digits_x: np.ndarray
) -> None:
    root = package.profile_path.parent
    with (
        SplitModel.open(root, 0, server.url) as remote_only,
        pytest.raises(InputError, match="would send private input"),
    ):
        remote_only.infer({"pixels": digits_x}, private=True)
    middle = package.profile.cuts[1].index
    with SplitModel.open(root, middle, server.url) as split:
        assert split.infer({"pixels": digits_x}, private=True).kind == "split"


def test_open_errors(package: SplitPackage) -> None:
    root = package.profile_path.parent
    with pytest.raises(InputError, match="give the server's URL"):
        SplitModel.open(root, package.profile.cuts[1].index)
    with pytest.raises(InputError, match="not in the profile"):
        SplitModel.open(root, 999, "http://127.0.0.1:9")


def test_adaptive_split_through_netem(
    package: SplitPackage, server: BackgroundServer, digits_x: np.ndarray, want: np.ndarray
) -> None:
    root = package.profile_path.parent
    with (
        NetemProxy(f"127.0.0.1:{server.port}", rtt="2ms", rate="50mbit") as proxy,
        AdaptiveSplit(root, proxy.url, initial=Estimates(rtt_ms=1), explore_every=2) as ad,
    ):
        ad.calibrate({"pixels": digits_x}, runs=2)
        est = ad.estimates()
        assert est.rtt_ms != 1 and ad.learner.up_bw.value is not None
        for _ in range(4):
            r = ad.predict({"pixels": digits_x})
            assert float(np.abs(r.outputs["logits"] - want).max()) <= 1e-5
            assert r.explored or r.cut == r.plan.index
        assert proxy.stats.bytes_up > 0


def test_adaptive_private_never_sends_raw(package: SplitPackage, server: BackgroundServer) -> None:
    root = package.profile_path.parent
    fast = Estimates(rtt_ms=0.1, up_mbps=1e5, down_mbps=1e5, device_slowdown=100)
    with AdaptiveSplit(root, server.url, initial=fast, private_inputs={"pixels"}) as ad:
        assert ad.plan().index != 0
    with AdaptiveSplit(root, server.url, initial=fast) as ad:
        assert ad.plan().index == 0


def test_split_set_options_for_the_offloader(
    package: SplitPackage, server: BackgroundServer, digits_x: np.ndarray, want: np.ndarray
) -> None:
    from edgeinfer.offload.estimate import RemoteEstimates
    from edgeinfer.offload.policy import LOCAL, Option, Situation, decide, latency
    from edgeinfer.offload.remote import RemoteModel
    from edgeinfer.split.placements import SplitSet, estimates_from, split_options

    # a known local-only time: a measured one can fall under the planner's scaling floor
    profile = dataclasses.replace(
        package.profile,
        cuts=tuple(
            dataclasses.replace(c, head_ms=1.0) if c.kind == "local" else c
            for c in package.profile.cuts
        ),
    )
    splits = SplitSet(package.profile_path.parent, profile)
    assert [c.kind for c in splits.cuts] == ["split"] * (len(package.profile.cuts) - 2)
    est = RemoteEstimates()
    unmeasured = split_options(splits, 0, est, local_s=0.01)
    assert all(o.latency_s is None and not o.sends_raw for o in unmeasured)
    assert {o.placement.cut for o in unmeasured} == {c.index for c in splits.cuts}
    # a slow device on a fast link: splitting beats running it all locally
    est.observe_probe(0.001, 0.0)
    est.observe_call(((1,),), 1, 1000, 1000, 1000, 0.0012, 0.0)
    local_ms = profile.cuts[-1].head_ms
    planner_est = estimates_from(profile, est, local_s=local_ms * 50 / 1e3)
    assert planner_est.device_slowdown == pytest.approx(50) and planner_est.up_mbps > 1
    options = split_options(splits, 0, est, local_s=local_ms * 50 / 1e3, label="edge")
    assert all(o.latency_s is not None and o.energy_j is not None for o in options)
    local = Option(LOCAL, local_ms * 50 / 1e3, 1.0, 1.0, False, "local")
    choice = decide(latency, Situation((local, *options), private=True))
    assert choice.placement.kind == "split" and choice.placement.remote == 0
    # run what was chosen: head here, tail on the server
    with RemoteModel(server.url, splits.tail_name(choice.placement.cut)) as tail:
        out = splits.runner(choice.placement.cut, tail).predict({"pixels": digits_x})
    assert float(np.abs(out["logits"] - want).max()) <= 1e-5
    splits.close()


@pytest.fixture(scope="module")
def packed_outputs(
    res_cnn: Path, digits_x: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> SplitPackage:
    """The same cuts, with uint8 cut compression and uint8 outputs."""
    root = tmp_path_factory.mktemp("split-out-u8")
    source = Bundle.create(res_cnn, root / "src", name="res-u8o", golden_inputs=digits_x[:2])
    cuts = select_cuts(cut_points(res_cnn), 4)
    return write_split(
        source, cuts, root / "out", compress="uint8", compress_outputs="uint8", repeats=2
    )


def test_compressed_outputs_are_restored_on_the_device(
    packed_outputs: SplitPackage,
    package: SplitPackage,
    server: BackgroundServer,
    digits_x: np.ndarray,
    want: np.ndarray,
) -> None:
    from edgeinfer.split.package import read_cut_record

    profile = packed_outputs.profile
    assert profile.compress_outputs == "uint8"
    remote = profile.cuts[0]
    assert read_cut_record(packed_outputs.tails[remote.index])["compress_outputs"] == "uint8"
    # what the profile plans with: the quantized answer, a quarter of the floats and ranges
    plain_down = package.profile.cuts[0].bytes_down
    assert remote.bytes_down == plain_down // 4 + 8 * 2  # 2 samples: a scale, an offset each
    config = ServeConfig(
        packed_outputs.repository, port=0, grpc_port=None, poll_interval_s=None, batching=BATCHING
    )
    root = packed_outputs.profile_path.parent
    with BackgroundServer(config) as srv:
        for cut in profile.cuts:
            with SplitModel.open(root, cut.index, srv.url) as split:
                r = split.infer({"pixels": digits_x})
                assert list(r.outputs) == ["logits"] and r.outputs["logits"].dtype == np.float32
                assert np.array_equal(r.outputs["logits"].argmax(1), want.argmax(1))
                assert float(np.abs(r.outputs["logits"] - want).max()) <= 0.1 * np.abs(want).max()
                if cut.kind != "local":
                    assert split.predict({"pixels": digits_x}, ["logits"]).keys() == {"logits"}
                    with pytest.raises(InputError, match="unknown output.*'probs'"):
                        split.predict({"pixels": digits_x}, ["probs"])
        with SplitModel.open(root, remote.index, srv.url) as packed:
            small = packed.infer({"pixels": digits_x}).down_bytes
    with SplitModel.open(package.profile_path.parent, 0, server.url) as plain:
        big = plain.infer({"pixels": digits_x}).down_bytes
    assert small < big
