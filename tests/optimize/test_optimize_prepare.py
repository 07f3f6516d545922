"""Preparing models from other exporters for the quantizers (passes/prepare.py), on tiny
graphs built here with the quirks real exporters write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.errors import EdgeInferError
from edgeinfer.optimize.errors import NotApplicable, OptimizeError
from edgeinfer.optimize.passes import run_pass
from edgeinfer.optimize.passes.dynamic_int8 import DynamicInt8Config
from edgeinfer.optimize.passes.prepare import (
    QDQ_OPSET,
    constants_to_initializers,
    default_opset,
    merge_opsets,
    prepare,
)
from edgeinfer.optimize.passes.static_int8 import StaticInt8Config, check_loads
from edgeinfer.optimize.search import failure


def _paddle_style(opsets: list[tuple[str, int]]) -> onnx.ModelProto:
    """Conv + bias + Relu whose weight and bias are Constant nodes, as paddle2onnx writes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle-style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
    )
    ids = [helper.make_opsetid(d, v) for d, v in opsets]
    return helper.make_model(graph, opset_imports=ids, ir_version=7)


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_prepare_brings_an_old_paddle_graph_to_opset_13_with_initializers() -> None:
    model = _paddle_style([("", 11)])
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = _run(model, x)
    prepared, info = prepare(model)
    assert default_opset(prepared) == QDQ_OPSET and info["opset"] == "11 -> 13"
    assert info["constants_to_initializers"] == 2
    assert {i.name for i in prepared.graph.initializer} == {"w", "b"}
    assert [n.op_type for n in prepared.graph.node] == ["Conv", "Relu"]
    np.testing.assert_allclose(_run(prepared, x), before, rtol=1e-6)


def test_two_default_domain_entries_become_one() -> None:
    model = _paddle_style([("ai.onnx.ml", 1), ("", 17), ("", 17), ("ai.onnx", 15)])
    assert merge_opsets(model)
    assert sorted((o.domain, o.version) for o in model.opset_import) == [
        ("", 17),
        ("ai.onnx.ml", 1),
    ]
    assert not merge_opsets(model)  # nothing left to merge
    assert constants_to_initializers(model) == 2 and constants_to_initializers(model) == 0


def test_a_model_that_needs_nothing_comes_back_as_is() -> None:
    model = _paddle_style([("", 17)])
    constants_to_initializers(model)
    same, info = prepare(model)
    assert same is model and info == {}


def test_static_int8_on_an_opset_11_graph_loads_in_onnx_runtime(tmp_path: Path) -> None:
    src = tmp_path / "old.onnx"
    onnx.save(_paddle_style([("", 11)]), src)
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    config = StaticInt8Config(calibration={"x": x}, per_channel=True)
    result = run_pass("static_int8", src, config, tmp_path / "q.onnx")
    assert result.info["opset"] == "11 -> 13"
    assert result.info["quantized_ops"]["DequantizeLinear"] >= 2
    got, want = _run(result.path, x), _run(src, x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_a_model_without_int8_operators_is_not_applicable(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Exp", ["x"], ["y"])],
        "exp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    src = tmp_path / "exp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(NotApplicable, match=r"nothing to quantize: .*the model has Exp\)"):
        run_pass("static_int8", src, StaticInt8Config(calibration={"x": x}), tmp_path / "s.onnx")
    with pytest.raises(NotApplicable, match="no operator here has a dynamic INT8 kernel"):
        run_pass("dynamic_int8", src, DynamicInt8Config(), tmp_path / "d.onnx")
    assert issubclass(NotApplicable, OptimizeError)


def test_a_quantized_model_runtime_refuses_is_one_actionable_line(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    # What the pass wrote before it prepared models: per-channel QDQ on an opset 11
    # graph, refused by ONNX Runtime (per-axis INT32 bias DequantizeLinear).
    src = tmp_path / "old.onnx"
    model = _paddle_style([("", 11)])
    constants_to_initializers(model)
    onnx.save(model, src)
    x = np.ones((1, 3, 8, 8), np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": x}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    bad = tmp_path / "scratch" / "bad.onnx"
    bad.parent.mkdir()
    quantize_static(str(src), str(bad), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    with pytest.raises(OptimizeError) as exc:
        check_loads(bad, "static INT8 quantization")
    message = str(exc.value)
    assert "\n" not in message and str(tmp_path) not in message
    assert "ONNX Runtime cannot load" in message and "DequantizeLinear" in message
    assert "per_channel=False" in message
    # ONNX Runtime's own message, as the search writes it into the table
    with pytest.raises(Exception) as raw:
        ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])
    line = failure(raw.value, tmp_path / "scratch")
    assert str(tmp_path) not in line and "\n" not in line and "[ONNXRuntimeError]" not in line
    assert not isinstance(raw.value, EdgeInferError) and line.startswith(type(raw.value).__name__)
