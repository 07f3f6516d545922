"""Tiny ONNX models built on the fly (as Olive's test utils do), importable from tests
and benchmarks as ``from onnx_builders import make_mlp``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

IR_VERSION = 9  # what the installed onnxruntime reads; newer onnx writes a newer IR by default


def make_mlp(path: Path, n_in: int = 4, n_hidden: int = 8, n_out: int = 3, seed: int = 0) -> Path:
    """A 2-layer MLP, x: float32 [N, n_in] -> logits: float32 [N, n_out]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_in, n_hidden)).astype(np.float32)
    b1 = rng.standard_normal(n_hidden).astype(np.float32)
    w2 = rng.standard_normal((n_hidden, n_out)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])],
        [
            onnx.numpy_helper.from_array(w1, "w1"),
            onnx.numpy_helper.from_array(b1, "b1"),
            onnx.numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_two_input(path: Path) -> Path:
    """ids: int64 [batch, seq], mask: int64 [batch, seq] -> out: float32 [batch, seq]."""
    nodes = [
        helper.make_node("Mul", ["ids", "mask"], ["prod"]),
        helper.make_node("Cast", ["prod"], ["out"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.save(model, path)
    return path


def make_other_mlp(path: Path) -> Path:
    """Same signature as the default MLP, different weights: golden samples disagree."""
    return make_mlp(path, seed=7)


def make_pooled_classifier(path: Path, dims: list[int | str | None], n_out: int = 2) -> Path:
    """x: [dims...] (rank 4, NCHW) -> probs: [N, n_out], by global average pooling.

    ``dims`` is written as declared, so a test can reproduce an exporter's spelling of
    unknown dims (``"?"``, ``""``, ``"unk__0"``, ``None``) exactly.
    """
    channels = dims[1] if isinstance(dims[1], int) else 3
    w = np.linspace(-1, 1, channels * n_out, dtype=np.float32).reshape(channels, n_out)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    for d in dims:
        dim = x.type.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "pooled",
        [x],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, n_out])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.save(model, path)
    return path
