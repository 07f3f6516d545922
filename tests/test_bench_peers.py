"""The server benchmark's peers (benchmarks/server_peers.py, triton_peer.py, peers/setup.sh).

The peers' environments are not part of the test setup (``benchmarks/peers/setup.sh DIR``
makes them); the test that serves through them runs only where they exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_server  # noqa: E402
import server_peers  # noqa: E402
import triton_peer  # noqa: E402

PEERS_DIR = Path(os.environ.get("EDGEINFER_PEERS_DIR", "/tmp"))


def test_missing_peers_say_how_to_make_them(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_server.py"),
            "--peers-only",
            "--peers-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{tmp_path}/mlserver-venv" in lines[0]
    assert f"{tmp_path}/triton-model-venv" in lines[0]
    assert f"create them with benchmarks/peers/setup.sh {tmp_path}" in lines[0]
    assert "wrote" not in proc.stdout


def test_triton_config_from_the_onnx_inputs(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["emb"], to=TensorProto.FLOAT)],
        "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 128])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", 128])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert triton_peer._config("m", path, 4) == (
        'name: "m"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [ { name: "ids" data_type: TYPE_INT64 dims: [ 128 ] } ]\n'
        'output [ { name: "emb" data_type: TYPE_FP32 dims: [ 128 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n"
    )
    unbatched = triton_peer._config("m", path, 0)
    assert "max_batch_size: 0" in unbatched
    assert "dims: [ -1, 128 ]" in unbatched
    assert "dynamic_batching" not in unbatched


def test_minilm_ratios_per_round() -> None:
    case = {
        "edgeinfer": {"rps": 60.0, "p50_ms": 500.0, "server_cpu_ms_per_answer": 20.0},
        "mlserver_pw0": {"rps": 50.0, "server_cpu_ms_per_answer": 25.0},
        "mlserver_pw0_batch4": {"rps": 55.0, "server_cpu_ms_per_answer": 22.0},
        "triton_batch4": {"rps": 75.0, "server_cpu_ms_per_answer": 10.0},
        server_peers.IN_PROCESS: {"rps": 64.0, "batch": 4, "cpu_ms_per_row": 15.0},
    }
    s = server_peers.compare(case)
    assert s["in_process_cpu_over_edgeinfer_cpu"] == 0.75
    assert s["mlserver_least_cpu_over_edgeinfer_cpu"] == 1.1
    assert (s["best_peer"], s["best_mlserver"]) == ("triton_batch4", "mlserver_pw0_batch4")
    assert s["edgeinfer_over_best_mlserver"] == round(60 / 55, 3)
    assert s["edgeinfer_over_best_peer"] == 0.8
    assert s["edgeinfer_over_in_process"] == round(60 / 64, 3)
    other = {**s, "edgeinfer_over_in_process": 0.8}
    rounds = [
        {"cases": {"grpc_c32": s, "grpc_c1": s}},
        {"cases": {"grpc_c32": other, "grpc_c1": other}},
    ]
    out = server_peers.summarize(rounds, list(case), server_peers.MINILM_TARGETS)
    assert out["grpc_c32"]["edgeinfer_over_in_process_per_round"] == [0.938, 0.8]
    assert out["grpc_c32"]["target_edgeinfer_over_in_process>=0.9_every_round"] is False
    assert out["grpc_c32"]["target_edgeinfer_over_in_process>=0.9_median"] is False
    assert out["grpc_c32"]["target_edgeinfer_over_best_mlserver>=1_every_round"] is True
    assert "target_edgeinfer_over_in_process>=0.9_every_round" not in out["grpc_c1"]
    assert out["grpc_c1"]["best_mlserver_by_median"] == "mlserver_pw0_batch4"
    assert out["grpc_c1"]["edgeinfer_median_over_best_mlserver_median"] == round(60 / 55, 3)
    assert out["grpc_c1"]["edgeinfer_median_over_in_process_median"] == round(60 / 64, 3)


def test_in_process_window_counts_rows_and_cpu(tmp_path: Path) -> None:
    import edgeinfer

    model = edgeinfer.load(bench_server.tiny_model(tmp_path / "t.onnx"), threads=1)
    try:
        w = server_peers.in_process_window(model, {"x": np.ones((1, 4), np.float32)}, 4, 0.05)
    finally:
        model.close()
    assert w["batch"] == 4
    assert w["rps"] > 0
    assert w["cpu_ms_per_row"] > 0


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[tuple[Path, dict[str, np.ndarray]]]:
    yield (
        bench_server.tiny_model(tmp_path / "tiny.onnx"),
        {"x": np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)},
    )


@pytest.mark.slow
def test_peers_answer_like_the_model(
    tmp_path: Path, tiny: tuple[Path, dict[str, np.ndarray]]
) -> None:
    missing = server_peers.missing_peers(PEERS_DIR)
    if missing:
        pytest.skip(missing)
    import edgeinfer

    path, feeds = tiny
    model = edgeinfer.load(path, providers=["cpu"], threads=1)
    want = model.predict(feeds)
    model.close()
    p = bench_server.payloads("tiny", feeds)
    out: dict[str, dict[str, str]] = {"servers": {}, "errors": {}}
    settings = tuple(s for s in server_peers.minilm_settings(4) if s.name == "mlserver_pw0_batch4")
    servers = server_peers.start_peers(
        tmp_path, {"tiny": path}, out, server_peers.mlserver_python_in(PEERS_DIR), settings,
        True, 4, PEERS_DIR,
    )  # fmt: skip
    try:
        assert out["errors"] == {}
        assert sorted(out["servers"]) == ["mlserver_pw0_batch4", "triton_batch4", "triton_defaults"]
        for server in servers:
            bench_server.check_answers(server, "tiny", p, ["rest_json", "grpc"], want)
        w = server_peers.measure_recorded(servers[-1], p, "grpc", 2, 0.2)
        assert w["ok"] > 0
        assert w["server_cpu_ms_per_answer"] > 0
    finally:
        for server in servers:
            server.stop()
