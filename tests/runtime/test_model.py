from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import BackendError, InputError, ProviderError


def test_predict_array_dict_and_list(mlp_path: Path) -> None:
    with edgeinfer.load(mlp_path, providers=["cpu"], threads=1) as model:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        a = model.predict(x)
        b = model.predict({"x": x})
        c = model.predict(x.tolist())
        assert list(a) == ["logits"] and a["logits"].shape == (2, 3)
        np.testing.assert_array_equal(a["logits"], b["logits"])
        np.testing.assert_array_equal(a["logits"], c["logits"])
        assert model.providers == ("CPUExecutionProvider",)
        assert [s.name for s in model.inputs] == ["x"]
        assert model.outputs[0].shape == ("N", 3)


def test_requested_outputs(two_input_path: Path) -> None:
    with edgeinfer.load(two_input_path) as model:
        ids = np.array([[1, 2, 3]])
        out = model.predict({"ids": ids, "mask": np.array([[1, 1, 0]])}, outputs=["out"])
        np.testing.assert_array_equal(out["out"], [[1.0, 2.0, 0.0]])
        with pytest.raises(InputError, match=r"unknown output\(s\) 'nope'; the model has 'out'"):
            model.predict({"ids": ids, "mask": ids}, outputs=["nope"])


BAD_INPUTS = [
    (np.ones((1, 4), np.int64), None),  # ints into a float input: converted
    (np.ones((1, 4), np.float64), None),
    (np.full((1, 4), np.nan, np.float32), None),  # NaN/Inf allowed, no crash
    (np.full((1, 4), np.inf, np.float32), None),
    (np.ones((1, 4), np.complex64), "expected float32 .N,4., got complex64"),
    (np.ones((4,), np.float32), "rank 1, expected rank 2"),
    (np.ones((1, 5), np.float32), "dimension 1 is 5, expected 4"),
    (np.ones((0, 4), np.float32), "empty"),
    (np.array([["a", "b", "c", "d"]]), "got str"),
    (np.array([[object()] * 4]), "got object"),
    ({}, r"missing input\(s\) 'x'"),
    ({"x": np.ones((1, 4)), "y": np.ones(1)}, r"unknown input\(s\) 'y'"),
]


@pytest.mark.parametrize(("value", "match"), BAD_INPUTS)
def test_bad_inputs_give_named_errors_and_model_keeps_working(
    mlp_path: Path, value: object, match: str | None
) -> None:
    with edgeinfer.load(mlp_path) as model:
        if match is None:
            model.predict(value)
        else:
            with pytest.raises(InputError, match=match):
                model.predict(value)
        assert model.predict(np.ones((1, 4), np.float32))["logits"].shape == (1, 3)


def test_predict_is_thread_safe_and_matches_serial(mlp_path: Path) -> None:
    rng = np.random.default_rng(0)
    batches = [
        rng.standard_normal((int(rng.integers(1, 9)), 4)).astype(np.float32) for _ in range(64)
    ]
    with edgeinfer.load(mlp_path, threads=1) as model:
        serial = [model.predict(b)["logits"] for b in batches]
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda b: model.predict(b)["logits"], batches))
    for s, p in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(s, p)


def test_provider_choice_is_explicit(mlp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ProviderError, match=r"'cuda' not available.*fallback=True"):
        edgeinfer.load(mlp_path, providers=["cuda"])
    model = edgeinfer.load(mlp_path, providers=["cuda"], fallback=True)
    assert model.providers == ("CPUExecutionProvider",)
    assert "falling back" in caplog.text
    assert edgeinfer.load(mlp_path, providers="auto").providers[-1] == "CPUExecutionProvider"


def test_session_options_are_applied(mlp_path: Path) -> None:
    model = edgeinfer.load(mlp_path, threads=2, graph_optimization="basic")
    opts = model.backend.session.get_session_options()  # type: ignore[attr-defined]
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(BackendError, match="graph_optimization 'max' unknown"):
        edgeinfer.load(mlp_path, graph_optimization="max")


def test_runtime_failure_keeps_backend_message_as_cause(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # Reshape to a shape that cannot hold the input: ONNX Runtime fails at run time.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([3, 7], np.int64), "shape")],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path
    )
    with edgeinfer.load(path) as model:
        with pytest.raises(BackendError, match="inference failed") as info:
            model.predict(np.ones(5, np.float32))
        assert info.value.__cause__ is not None
        assert model.predict(np.ones(21, np.float32))["y"].shape == (3, 7)


def test_sample_inputs_and_warmup(two_input_path: Path) -> None:
    with edgeinfer.load(two_input_path) as model:
        feeds = model.sample_inputs(batch=2, dims={"seq": 5})
        assert feeds["ids"].shape == (2, 5) and (feeds["mask"] == 1).all()
        model.warmup()


@pytest.mark.parametrize("unknown", ["?", "", "unk__0", None])
def test_unknown_dims_are_independent(tmp_path: Path, unknown: str | None) -> None:
    from onnx_builders import make_pooled_classifier

    path = make_pooled_classifier(tmp_path / "cls.onnx", [None, 3, unknown, unknown])
    with edgeinfer.load(path) as model:
        assert model.inputs[0].shape == (None, 3, None, None)
        out = model.predict(np.ones((1, 3, 48, 192), np.float32))
        np.testing.assert_allclose(out["probs"].sum(axis=1), [1.0], rtol=1e-5)


def test_named_dims_across_inputs_must_agree(two_input_path: Path) -> None:
    feeds = {"ids": np.ones((1, 3), np.int64), "mask": np.ones((1, 2), np.int64)}
    with (
        edgeinfer.load(two_input_path) as model,
        pytest.raises(InputError, match=r"'seq'\) is 2, but input 'ids' has 'seq' = 3"),
    ):
        model.predict(feeds)


def test_paddle_exports_take_non_square_images(ppocr_models: Path) -> None:
    """Paddle writes '?' for every unknown dim: the angle classifier is [?,3,?,?]."""
    with edgeinfer.load(ppocr_models / "ch_ppocr_mobile_v2.0_cls_infer.onnx") as cls:
        assert cls.inputs[0].shape == (None, 3, None, None)
        probs = cls.predict(np.zeros((2, 3, 48, 192), np.float32))
        assert next(iter(probs.values())).shape == (2, 2)
    with edgeinfer.load(ppocr_models / "ch_PP-OCRv4_rec_infer.onnx") as rec:
        assert rec.inputs[0].shape == ("p2o.DynamicDimension.0", 3, None, "p2o.DynamicDimension.1")
        out = next(iter(rec.predict(np.zeros((1, 3, 48, 320), np.float32)).values()))
        assert out.shape[0] == 1 and out.shape[2] == 6625
