"""A ``.tflite`` model served over the Open Inference Protocol (REST and gRPC), and the
Offloader with a ``.tflite`` model on the device and its ONNX twin on a server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.offload import Offloader, OffloaderConfig, RemoteModel
from edgeinfer.serve import BackgroundServer, ServeConfig

pytest.importorskip("ai_edge_litert", reason="needs the 'litert' extra")
oww = pytest.importorskip("wyoming_openwakeword", reason="wyoming-openwakeword (--no-deps)")
micro = pytest.importorskip("pymicro_wakeword", reason="needs the 'models' extra")

# openWakeWord's "ok nabu" classifier: float32 [1, 16, 96] speech embeddings -> [1, 1]
OK_NABU = Path(oww.__file__).parent / "models" / "ok_nabu_v0.1.tflite"
# microWakeWord's streaming detector: int8 [1, 3, 40] feature rows -> uint8 [1, 1]
OKAY_NABU = Path(micro.__file__).parent / "models" / "okay_nabu.tflite"
X = np.random.default_rng(0).standard_normal((1, 16, 96)).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """A bundle of the float classifier and the bare int8 detector, side by side."""
    repo = tmp_path_factory.mktemp("tflite-repo")
    Bundle.create(OK_NABU, repo / "ok-nabu" / "1", name="ok-nabu", version=1, golden_inputs=X)
    (repo / "okay-nabu" / "1").mkdir(parents=True)
    (repo / "okay-nabu" / "1" / "model.tflite").write_bytes(OKAY_NABU.read_bytes())
    cfg = ServeConfig(repo, port=0, grpc_port=0, poll_interval_s=None)
    with BackgroundServer(cfg) as s:
        yield s


def _first(outputs: dict[str, np.ndarray]) -> np.ndarray:
    (value,) = outputs.values()
    return value


def test_tflite_served_over_rest_and_grpc(server: BackgroundServer) -> None:
    meta = httpx.get(f"{server.url}/v2/models/ok-nabu", timeout=10).json()
    assert meta["platform"] == "tensorflow_tflite"
    (spec,) = meta["inputs"]
    assert (spec["datatype"], spec["shape"]) == ("FP32", [1, 16, 96])
    with edgeinfer.load(OK_NABU) as local:
        want = _first(local.predict(X))
        for url in (server.url, f"grpc://{server.grpc_target}"):
            with RemoteModel(url, "ok-nabu") as remote:
                np.testing.assert_array_equal(_first(remote.predict(X)), want)
    # The int8 streaming detector over plain JSON: int8 numbers in, its uint8 [1, 1] out.
    frame = np.random.default_rng(1).integers(-128, 127, (1, 3, 40)).astype(np.int8)
    body = {"inputs": [{"name": "serving_default_input_audio:0", "shape": [1, 3, 40],
                        "datatype": "INT8", "data": frame.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/okay-nabu/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["datatype"], out["shape"]) == ("UINT8", [1, 1])
    # A wrong dtype is a 4xx with a one-line JSON error naming what was expected.
    body["inputs"][0]["datatype"] = "FP32"
    r = httpx.post(f"{server.url}/v2/models/okay-nabu/infer", json=body, timeout=10)
    assert 400 <= r.status_code < 500, r.text
    assert "expects INT8" in r.json()["error"] and "\n" not in r.json()["error"]


@pytest.fixture(scope="module")
def onnx_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The classifier converted back to ONNX by tf2onnx (same input and output names)."""
    tf2onnx = pytest.importorskip("tf2onnx", reason="needs tf2onnx (the 'tensorflow' extra)")
    out = tmp_path_factory.mktemp("twin") / "ok-nabu" / "1" / "model.onnx"
    out.parent.mkdir(parents=True)
    tf2onnx.convert.from_tflite(str(OK_NABU), opset=17, output_path=str(out))
    return out


@pytest.mark.slow  # tf2onnx imports TensorFlow to convert (about 10 s)
def test_offloader_runs_a_tflite_locally_and_its_onnx_twin_remotely(onnx_twin: Path) -> None:
    repo = onnx_twin.parents[2]
    cfg = ServeConfig(repo, port=0, grpc_port=0, poll_interval_s=None)
    fast = OffloaderConfig(per_try_timeout_s=2.0, probe_timeout_s=2.0)
    with (
        BackgroundServer(cfg) as server,
        edgeinfer.load(OK_NABU) as local,
        Offloader(local, [RemoteModel(server.url, "ok-nabu")], config=fast) as off,
    ):
        assert local.backend.name == "litert"
        want = _first(local.predict(X))
        off.calibrate(X, runs=3)  # times both for real: the 20 us model stays here
        here = off.predict(X)
        assert here.placement == "local"
        np.testing.assert_array_equal(_first(here.outputs), want)
        # With the local model made to look slow, the estimates send work to the server.
        sig = tuple(a.shape for a in off._validate(X).values())
        for _ in range(7):
            off.local_est.observe(sig, X.size, 1.0, time.perf_counter())
        there = off.predict(X)
        assert there.placement == "remote" and there.remote == server.url
        assert not there.fallback
        np.testing.assert_allclose(_first(there.outputs), want, rtol=1e-4, atol=1e-5)
