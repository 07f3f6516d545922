"""``edgeinfer optimize`` for LiteRT: the TFLite variants of a Keras CNN trained on digits,
measured on LiteRT over held-out digits, gated, bundled and reported; a quantized .tflite
recognised as such; and the same Keras model sent down the ONNX search with --target onnx."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from edgeinfer.bundle import Bundle
from edgeinfer.cli.main import build_app, main
from edgeinfer.optimize import SearchConfig
from edgeinfer.optimize.tflite import optimize_tflite

pytestmark = pytest.mark.slow  # TensorFlow's import, a short training, five conversions


@pytest.fixture(scope="module")
def keras_digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from keras_models import digits_cnn

    trained = digits_cnn()
    root = tmp_path_factory.mktemp("keras-digits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        trained.model.save(root / "digits.keras")
    np.savez(root / "eval.npz", pixels=trained.x_test, labels=trained.y_test)
    np.save(root / "calib.npy", trained.x_train[:200])
    return {p.stem: p for p in root.iterdir()}


def _invoke(*args: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(build_app(), list(args))


@pytest.fixture(scope="module")
def litert_bundle(keras_digits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("litert") / "digits-litert"
    result = _invoke(
        "optimize",
        str(keras_digits["digits"]),
        "--eval",
        str(keras_digits["eval"]),
        "--calibration",
        str(keras_digits["calib"]),
        "--metric",
        "accuracy",
        "--max-drop",
        "0.5%",
        "--objective",
        "size",
        "--repeats",
        "5",
        "--candidates",
        "float16,dynamic-int8,int8-io,aeq-weight-only-int4,aeq-static-wi8-ai8",
        "--out",
        str(out),
    )
    return out, result


def test_keras_model_searched_on_litert(litert_bundle: Any) -> None:
    out, result = litert_bundle
    assert result.exit_code == 0, result.output
    for name in ("float16", "dynamic-int8", "int8-io", "aeq-static-wi8-ai8", "chose"):
        assert name in result.output
    bundle = Bundle.open(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert bundle.manifest.format == "tflite"
    recipe = manifest["provenance"]["recipe"]
    assert recipe["layout"] == "NHWC" and recipe["search"]["target"] == "tflite"
    opt = manifest["metrics"]["optimize"]
    assert opt["size_ratio"] <= 0.5  # an INT8 variant: about a quarter of float32's weights
    assert opt["baseline"] - opt["value"] <= 0.005 * opt["baseline"] + 1e-9
    report = json.loads((out.parent / f"{out.name}-report" / "report.json").read_text())
    names = {c["name"] for c in report["candidates"]}
    assert report["target"] == "tflite" and {"int8-io", "aeq-static-wi8-ai8"} <= names
    # the golden samples replay on the bundled model (int8 inputs where the model takes them)
    model = bundle.model_path
    import edgeinfer

    with edgeinfer.load(out) as m:
        golden = bundle.golden()
        assert golden is not None
        got = m.predict(golden.inputs)
        assert not golden.compare(got)
    assert model.suffix == ".tflite"


def test_quantized_tflite_is_recognised_and_measured_as_it_is(
    litert_bundle: Any, keras_digits: dict[str, Path], tmp_path: Path
) -> None:
    out, _ = litert_bundle
    model = Bundle.open(out).model_path
    from edgeinfer.convert import inspect_tflite

    info = inspect_tflite(model)
    with np.load(keras_digits["eval"]) as z:
        data = {info.inputs[0].name: z["pixels"][:64], "labels": z["labels"][:64]}
    result = optimize_tflite(
        model,
        data,
        tmp_path / "again",
        config=SearchConfig(metric="accuracy", repeats=3, final_rounds=0, memory=False),
        report=False,
    ).result
    assert result.kept_original
    assert any("already quantized" in n for n in result.notes), result.notes
    assert {c.status for c in result.candidates} == {"skipped"}
    assert result.baseline.evaluation is not None
    assert result.baseline.evaluation.metrics["accuracy"] > 0.85


def test_float_tflite_gets_ai_edge_quantizer_candidates(
    keras_digits: dict[str, Path], tmp_path: Path
) -> None:
    from edgeinfer.convert import inspect_tflite, keras_to_tflite

    flat = keras_to_tflite(keras_digits["digits"], tmp_path / "f32.tflite").path
    name = inspect_tflite(flat).inputs[0].name  # a bare .tflite is fed by tensor names
    with np.load(keras_digits["eval"]) as z:
        data = {name: z["pixels"], "labels": z["labels"]}
    calibration = {name: np.load(keras_digits["calib"])}
    result = optimize_tflite(
        flat,
        data,
        tmp_path / "aeq",
        calibration=calibration,
        candidates=("int8", "aeq-weight-only-int8", "aeq-static-wi8-ai8"),
        config=SearchConfig(metric="accuracy", max_drop="1%", objective="size", memory=False),
        report=False,
    ).result
    status = {c.name: (c.status, c.reason) for c in result.candidates}
    assert status["int8"] == ("skipped", "needs the Keras/SavedModel source")
    assert status["aeq-weight-only-int8"][0] == status["aeq-static-wi8-ai8"][0] == "ok", status
    static = next(c for c in result.candidates if c.name == "aeq-static-wi8-ai8")
    assert static.path is not None and static.evaluation is not None
    assert static.evaluation.metrics["agreement"] > 0.95
    assert not result.kept_original and result.chosen.name.startswith("aeq-")


def test_target_onnx_converts_then_searches_onnx_runtime(
    keras_digits: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "digits-onnx"
    result = _invoke(
        "optimize",
        str(keras_digits["digits"]),
        "--target",
        "onnx",
        "--eval",
        str(keras_digits["eval"]),
        "--metric",
        "accuracy",
        "--candidates",
        "dynamic-int8",
        "--repeats",
        "5",
        "--no-memory",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "converted" in result.output and "cosine" in result.output
    assert Bundle.open(out).manifest.format == "onnx"


def test_target_both_keeps_the_better_world(keras_digits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "digits-best"
    result = _invoke(
        "optimize",
        str(keras_digits["digits"]),
        "--target",
        "both",
        "--eval",
        str(keras_digits["eval"]),
        "--calibration",
        str(keras_digits["calib"]),
        "--metric",
        "accuracy",
        "--objective",
        "size",
        "--candidates",
        "int8-io,dynamic-int8",  # int8-io for LiteRT; dynamic-int8 for both
        "--repeats",
        "5",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "--target both:" in result.output and "wins for size" in result.output
    bundle = Bundle.open(out)
    assert bundle.manifest.format in ("tflite", "onnx")
    assert (out.parent / f"{out.name}-report" / "report.md").is_file()
    left = sorted(p.name for p in tmp_path.iterdir())  # no scratch folder left behind
    assert left == sorted([out.name, f"{out.name}-report"])


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    out = capsys.readouterr()
    return code, out.out + out.err


def test_bad_target_requests(
    keras_digits: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    args = ["--eval", str(keras_digits["eval"]), "--out", str(tmp_path / "o")]
    keras = str(keras_digits["digits"])
    for model, extra, message in [
        (str(onnx_file), ["--target", "tflite"], "ONNX -> TFLite is not supported"),
        (keras, ["--target", "coreml"], "expected onnx, tflite, both or auto"),
        (keras, ["--candidates", "int4"], "unknown TFLite candidate"),
    ]:
        code, text = _main(capsys, "optimize", model, *extra, *args)
        assert code == 2 and message in text, text
        assert "Traceback" not in text
