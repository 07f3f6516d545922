"""Each pass on a real model (the digits CNN): it runs, keeps its contract, reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeinfer
from edgeinfer.convert import max_ir_version
from edgeinfer.errors import InputError
from edgeinfer.optimize.passes import PASSES, get_pass, make_config, run_pass
from edgeinfer.optimize.passes.compact import CompactConfig
from edgeinfer.optimize.passes.dynamic_int8 import DynamicInt8Config
from edgeinfer.optimize.passes.fp16 import Fp16Config
from edgeinfer.optimize.passes.graph import GraphConfig
from edgeinfer.optimize.passes.prune import NO_SPEEDUP_NOTE, PruneConfig
from edgeinfer.optimize.passes.sensitivity import SensitivityConfig
from edgeinfer.optimize.passes.static_int8 import StaticInt8Config


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    with edgeinfer.load(path, providers=["cpu"]) as model:
        return model.predict({"pixels": x})["logits"]


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(_logits(path, x).argmax(1) == y))


@pytest.fixture(scope="module")
def graph_model(digits_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph") / "graph.onnx"
    result = run_pass("graph", digits_onnx, GraphConfig(), out)
    assert result.info["nodes_after"] <= result.info["nodes_before"]
    return out


def test_graph_pass_keeps_the_outputs(graph_model: Path, digits_onnx: Path, digits: tuple) -> None:
    x = digits[2][:64]
    np.testing.assert_allclose(_logits(graph_model, x), _logits(digits_onnx, x), atol=1e-4)
    ops = {n.op_type for n in onnx.load(graph_model).graph.node}
    assert "BatchNormalization" not in ops
    assert onnx.load(graph_model).ir_version <= max_ir_version()


def test_dynamic_int8_shrinks_and_stays_close(
    graph_model: Path, digits: tuple, tmp_path: Path
) -> None:
    _, _, x, y = digits
    for per_channel in (False, True):
        out = tmp_path / f"dyn{per_channel}.onnx"
        result = run_pass(
            "dynamic_int8", graph_model, DynamicInt8Config(per_channel=per_channel), out
        )
        assert result.info["quantized_ops"]
        assert out.stat().st_size < 0.5 * graph_model.stat().st_size
        assert _accuracy(out, x, y) >= _accuracy(graph_model, x, y) - 0.02


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_each_method(
    graph_model: Path, digits: tuple, tmp_path: Path, method: str
) -> None:
    x_train, _, x, y = digits
    out = tmp_path / f"{method}.onnx"
    config = StaticInt8Config(calibration={"pixels": x_train[:64]}, method=method)
    result = run_pass("static_int8", graph_model, config, out)
    assert result.info["calibration_samples"] == 64
    assert result.info["quantized_ops"].get("QuantizeLinear", 0) > 0
    assert _accuracy(out, x, y) >= _accuracy(graph_model, x, y) - 0.02


def test_static_int8_reads_an_npz_and_refuses_mismatched_calibration(
    graph_model: Path, digits: tuple, tmp_path: Path
) -> None:
    npz = tmp_path / "calib.npz"
    np.savez(npz, pixels=digits[0][:16])
    run_pass("static_int8", graph_model, StaticInt8Config(calibration=npz), tmp_path / "q.onnx")
    bad = StaticInt8Config(calibration={"image": digits[0][:16]})
    with pytest.raises(InputError, match=r"calibration data: missing input\(s\) 'pixels'"):
        run_pass("static_int8", graph_model, bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(InputError, match="needs calibration data"):
        run_pass("static_int8", graph_model, StaticInt8Config(), tmp_path / "none.onnx")


def test_sensitivity_keeps_the_worst_nodes_in_float(
    graph_model: Path, digits: tuple, tmp_path: Path
) -> None:
    x_train = digits[0]
    quant = StaticInt8Config(calibration={"pixels": x_train[:32]})
    config = SensitivityConfig(quantization=quant, data={"pixels": x_train[:8]}, exclude=2)
    out = tmp_path / "sens.onnx"
    result = run_pass("sensitivity", graph_model, config, out)
    excluded = result.info["excluded"]
    assert len(excluded) == 2 and len(result.info["ranking"]) >= 2
    ranking = result.info["ranking"]
    assert ranking[0]["added_error"] >= ranking[1]["added_error"]
    graph = onnx.load(out).graph
    producers = {o: n for n in graph.node for o in n.output}
    for name in excluded:
        node = next(n for n in graph.node if n.name == name)
        weight = producers.get(node.input[1])
        # a node kept in float reads its weight directly, not through DequantizeLinear
        assert weight is None or weight.op_type != "DequantizeLinear"


def test_fp16_keeps_float32_io(graph_model: Path, digits: tuple, tmp_path: Path) -> None:
    out = tmp_path / "fp16.onnx"
    run_pass("fp16", graph_model, Fp16Config(), out)
    with edgeinfer.load(out, providers=["cpu"]) as model:
        assert model.inputs[0].dtype == "float32" and model.outputs[0].dtype == "float32"
        got = model.predict({"pixels": digits[2][:32]})["logits"]
    np.testing.assert_allclose(got, _logits(graph_model, digits[2][:32]), atol=0.05)
    assert out.stat().st_size < 0.6 * graph_model.stat().st_size


def test_prune_reports_sparsity_and_says_no_speedup(graph_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.onnx"
    info = run_pass("prune", graph_model, PruneConfig(sparsity=0.5), out).info
    assert 0.45 <= info["weight_sparsity"] <= 0.55
    assert info["compressed_bytes"] < info["compressed_bytes_before"]
    assert info["note"] == NO_SPEEDUP_NOTE and "not faster" in info["note"]


def test_compact_renames_without_changing_results(
    graph_model: Path, digits: tuple, tmp_path: Path
) -> None:
    out = tmp_path / "compact.onnx"
    info = run_pass("compact", graph_model, CompactConfig(), out).info
    assert info["bytes_saved"] > 0
    np.testing.assert_array_equal(
        _logits(out, digits[2][:16]), _logits(graph_model, digits[2][:16])
    )
    names = {n.name for n in onnx.load(out).graph.node}
    assert all(len(n) <= 4 for n in names)


def test_registry_and_options() -> None:
    assert set(PASSES) >= {
        "graph",
        "dynamic_int8",
        "static_int8",
        "sensitivity",
        "fp16",
        "prune",
        "distill",
        "compact",
    }
    for name in PASSES:
        cls, run = get_pass(name)
        assert callable(run) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert make_config("dynamic_int8", {"per_channel": True}).per_channel
    with pytest.raises(InputError, match="unknown option.*'per_chanel'.*dynamic_int8"):
        make_config("dynamic_int8", {"per_chanel": True})
    with pytest.raises(InputError, match="unknown pass 'quantise'"):
        get_pass("quantise")
    with pytest.raises(InputError, match="calibration method 'kl'"):
        StaticInt8Config(method="kl")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="sparsity"):
        PruneConfig(sparsity=1.5)
    with pytest.raises(InputError, match="takes a DynamicInt8Config"):
        run_pass("dynamic_int8", Path("x.onnx"), PruneConfig(), Path("y.onnx"))
