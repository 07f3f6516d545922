"""``rtn-asymf``: INT4 blocks with a float offset, GGUF Q4_1's recipe (optimize.int4_asymf).

Weights quantized to Q4_1 by the ``gguf`` package (llama.cpp's reference quantizer) and
dequantized must come back exactly, as weights, through ONNX Runtime, and through the
generative search on the tiny Llama whose weights are made Q4_1-shaped."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.bundle import Bundle
from edgeinfer.demo._tiny_lm import TEXT
from edgeinfer.generate import create_bundle, load
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.generative import GenerativeConfig
from edgeinfer.optimize.generative_pipeline import optimize_generative
from edgeinfer.optimize.int4_asymf import apply, dequantize, quantize_blocks
from edgeinfer.optimize.weight_only import parse

gguf = pytest.importorskip("gguf")


def q41(w: np.ndarray) -> np.ndarray:
    """``w`` [K, N] through GGUF Q4_1 (blocks of 32 along K) and back, as llama.cpp would."""
    kind = gguf.GGMLQuantizationType.Q4_1
    rows = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(w.T), kind), kind)
    return np.ascontiguousarray(rows.T.astype(np.float32))


def test_q41_blocks_come_back_exactly() -> None:
    rng = np.random.default_rng(0)
    w = q41(rng.standard_normal((96, 40)).astype(np.float32) * 0.05)
    q, d, m = quantize_blocks(w, 32)
    assert q.shape == (40, 3, 32) and q.max() == 15 and q.min() == 0
    assert np.array_equal(dequantize(q, d, m, 96), w)
    # the file's own offsets are each block's minimum
    assert np.array_equal(m, w.T.reshape(40, 3, 32).min(axis=2))


def test_blocks_made_as_d_q_plus_m_partial_block_and_constant_block() -> None:
    rng = np.random.default_rng(1)
    k, n = 80, 6  # 2 whole blocks of 32 and one of 16
    q = rng.integers(0, 16, (n, 3, 32))
    q[:, :, 0], q[:, :, 1] = 0, 15  # llama.cpp's m is the block's min, m + 15 d its max
    q[:, 2, 16:] = 0  # padding beyond K
    d = rng.uniform(1e-3, 2e-2, (n, 3)).astype(np.float16).astype(np.float32)
    m = -rng.uniform(0, 0.1, (n, 3)).astype(np.float16).astype(np.float32)
    w = np.ascontiguousarray((q * d[:, :, None] + m[:, :, None]).reshape(n, -1)[:, :k].T)
    w = w.astype(np.float32)
    w[:32, 0] = 0.25  # a constant block: scale 0, offset the value
    got_q, got_d, got_m = quantize_blocks(w, 32)
    assert np.array_equal(dequantize(got_q, got_d, got_m, k), w)
    assert got_d[0, 0] == 0 and got_m[0, 0] == np.float32(0.25)
    assert np.array_equal(got_q[1:, :2], q[1:, :2])


def _one_matmul(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("level", [0, 4])
def test_onnx_runtime_computes_the_q41_weight(level: int) -> None:
    """MatMulNBits (zero points 0) plus blocksum(x) @ offsets equals x @ W: to float
    rounding with float activations, to int8 activations' error at accuracy level 4."""
    rng = np.random.default_rng(2)
    w = q41(rng.standard_normal((576, 96)).astype(np.float32) * 0.05)
    model, added = apply(_one_matmul(w), ["/proj/MatMul"], 32, level)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("MatMul") == 2 == len(added)
    assert "w" not in {i.name for i in model.graph.initializer}  # the float weight is gone
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 5, 576)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    ref = x.astype(np.float64) @ w.astype(np.float64)
    err = float(np.abs(y - ref).max() / np.abs(ref).max())
    assert err < (1e-5 if level == 0 else 3e-2)


def test_partial_block_runs_in_onnx_runtime() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 8)).astype(np.float32)  # K = 32 + 8
    model, _ = apply(_one_matmul(w), ["/proj/MatMul"], 32, 0)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 3, 40)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    q, d, m = quantize_blocks(w, 32)
    np.testing.assert_allclose(y, x @ dequantize(q, d, m, 40), rtol=1e-5, atol=1e-5)


def test_float16_weights_are_not_applicable() -> None:
    w = np.ones((64, 8), np.float16)
    with pytest.raises(NotApplicable, match="float32 weights; this model's MatMuls have float16"):
        apply(_one_matmul(w), ["/proj/MatMul"], 32, 4)


def test_candidate_name() -> None:
    spec = parse("int4-rtn-asymf-b32-acc4-head-int8")
    assert (spec.method, spec.block_size, spec.head) == ("rtn-asymf", 32, "int8")
    assert "Q4_1" in spec.describe()


@pytest.fixture(scope="module")
def q41_tiny(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The tiny Llama with every MatMul weight but the LM head made Q4_1-shaped (through
    GGUF Q4_1 and back), as SmolLM2's float model is."""
    src = tmp_path_factory.mktemp("q41-tiny") / "model"
    shutil.copytree(tiny_dir, src)
    model = onnx.load(str(src / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and "lm_head" not in node.name:
            init = inits[node.input[1]]
            init.CopyFrom(numpy_helper.from_array(q41(numpy_helper.to_array(init)), init.name))
    (src / "model.onnx.data").unlink()
    onnx.save_model(
        model,
        str(src / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    return create_bundle(
        src,
        src.parent / "bundle",
        name="tiny-q41",
        golden_prompts=("the quick brown",),
        golden_max_tokens=8,
        quantization={"precision": "fp32"},
    )


def test_search_recovers_a_q41_model_exactly(q41_tiny: Bundle, tmp_path: Path) -> None:
    eval_text = tmp_path / "eval.txt"
    eval_text.write_text(TEXT[:1500], encoding="utf-8")
    names = ("int4-rtn-asymf-b32-acc0-head-fp32", "int4-rtn-asymf-b32-acc4-head-int8")
    config = GenerativeConfig(
        candidates=names, objective="size", rounds=1, decode_tokens=8, prompt_tokens=8, threads=1
    )
    out = optimize_generative(
        q41_tiny.path, tmp_path / "opt", eval_text=eval_text, config=config, report=False
    )
    result = out.result
    base = result.baseline.evaluation
    exact, fast = result.candidates
    assert base is not None and exact.evaluation is not None and fast.evaluation is not None
    assert exact.status == fast.status == "ok"
    # float activations over the file's own weights: the float model's scores
    assert exact.evaluation.metrics["agreement"] == 1.0
    assert exact.evaluation.metrics["perplexity"] == pytest.approx(
        base.metrics["perplexity"], rel=1e-4
    )
    assert exact.within_budget
    assert exact.evaluation.size_bytes < base.size_bytes
    ops = {n.op_type for n in onnx.load(str(out.bundle.path / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    with load(out.bundle.path, threads=1) as model:
        assert Bundle.open(out.bundle.path).check_golden(model) == []
