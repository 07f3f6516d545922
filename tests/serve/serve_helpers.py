"""Models, repositories and running servers for the serve tests (real parts only)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.serve import BackgroundServer, BatchConfig, ServeConfig

IR_VERSION = 9


def _save(graph: Any, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def mlp(path: Path, seed: int = 0, n_in: int = 4, n_out: int = 3) -> Path:
    """x: float32 [N, n_in] -> logits: float32 [N, n_out], probs: float32 [N, n_out]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out]),
        ],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def mlp_weights(seed: int = 0, n_in: int = 4, n_out: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_in, n_out)).astype(np.float32)


def fixed(path: Path) -> Path:
    """A model with a fixed batch: a: int64 [2, 3] -> b: int64 [2, 3] (b = a * 2)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "a"], ["b"])],
        "fixed",
        [helper.make_tensor_value_info("a", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("b", TensorProto.INT64, [2, 3])],
    )
    return _save(graph, path)


def slow(path: Path, layers: int = 60, width: int = 1024) -> Path:
    """x: float32 [N, 4] -> y: float32 [N, 4] through ``layers`` [width x width] MatMuls.

    Slow on purpose (tens of milliseconds for one row on one thread): requests pile up.
    """
    rng = np.random.default_rng(0)
    w_in = rng.standard_normal((4, width)).astype(np.float32)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w_out = (rng.standard_normal((width, 4)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w_in, "w_in"), (w, "w"), (w_out, "w_out"))],
    )
    return _save(graph, path)


def repository(root: Path) -> Path:
    """mlp (versions 1 and 2, different weights) and fixed (version 1)."""
    mlp(root / "mlp" / "1" / "model.onnx", seed=0)
    mlp(root / "mlp" / "2" / "model.onnx", seed=1)
    fixed(root / "fixed" / "1" / "model.onnx")
    return root


def config(root: Path, **changes: Any) -> ServeConfig:
    batching = changes.pop("batching", BatchConfig())
    base = ServeConfig(
        root, port=0, grpc_port=0, poll_interval_s=None, threads=1, batching=batching
    )
    return dataclasses.replace(base, **changes)


@contextlib.contextmanager
def running(cfg: ServeConfig) -> Iterator[BackgroundServer]:
    server = BackgroundServer(cfg).start()
    try:
        yield server
    finally:
        server.stop()


def infer_body(x: Any, name: str = "x", datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    arr = np.asarray(x)
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": datatype,
                "data": arr.reshape(-1).tolist(),
            }
        ],
        **extra,
    }
