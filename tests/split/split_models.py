"""Graph builders for the split tests.

``make_res_cnn`` builds a small CNN with a residual block, a two-branch block joined by a
Concat and a Shape -> Reshape flatten (a per-request shape tensor), in the digits input
format, so it runs on the real digits images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 9


def _conv(rng: np.random.Generator, name: str, cin: int, cout: int, k: int) -> list:
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]


def make_res_cnn(path: Path, seed: int = 0, opset: int = 17) -> Path:
    """pixels float32 [N,1,8,8] -> logits float32 [N,10], with residual and branches."""
    rng = np.random.default_rng(seed)
    inits = []
    for name, cin, cout, k in [
        ("c1", 1, 8, 3), ("c2", 8, 8, 3), ("c3", 8, 8, 3), ("ba", 8, 4, 1), ("bb", 8, 4, 3),
    ]:  # fmt: skip
        inits += _conv(rng, name, cin, cout, k)
    fc = (rng.standard_normal((8 * 4 * 4, 10)) / 8).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc.w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]

    def conv(x: str, name: str, out: str, k: int) -> onnx.NodeProto:
        pads = [k // 2] * 4
        return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], pads=pads)

    nodes = [
        conv("pixels", "c1", "c1", 3),
        helper.make_node("Relu", ["c1"], ["r1"]),
        # residual block: r2 = relu(r1 + conv3(relu(conv2(r1))))
        conv("r1", "c2", "c2", 3),
        helper.make_node("Relu", ["c2"], ["c2r"]),
        conv("c2r", "c3", "c3", 3),
        helper.make_node("Add", ["c3", "r1"], ["res"]),
        helper.make_node("Relu", ["res"], ["r2"]),
        # two branches joined by Concat
        conv("r2", "ba", "ba", 1),
        conv("r2", "bb", "bb", 3),
        helper.make_node("Relu", ["bb"], ["bbr"]),
        helper.make_node("Concat", ["ba", "bbr"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        # flatten through a computed shape: [batch, -1]
        helper.make_node("Shape", ["pool"], ["pool_shape"]),
        helper.make_node("Gather", ["pool_shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "res_cnn",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
