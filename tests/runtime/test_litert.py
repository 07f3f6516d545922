"""The LiteRT backend on real .tflite models shipped in pymicro-wakeword."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import BackendError, InputError

wakeword = pytest.importorskip("pymicro_wakeword", reason="needs the 'models' extra")
pytest.importorskip("ai_edge_litert", reason="needs the 'litert' extra")

MODEL = Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"


def test_litert_signature_and_predict() -> None:
    with edgeinfer.load(MODEL) as model:
        assert model.backend.name == "litert"
        (spec,) = model.inputs
        assert spec.dtype == "int8" and spec.shape == (1, 3, 40)
        out = model.predict(np.zeros((1, 3, 40), np.int8))
        (prob,) = out.values()
        assert prob.dtype == np.uint8 and prob.shape == (1, 1)
        with pytest.raises(InputError, match=r"expected int8 \[1,3,40\], got float32"):
            model.predict(np.zeros((1, 3, 40), np.float32))
        with pytest.raises(InputError, match="dimension 1 is 4, expected 3"):
            model.predict(np.zeros((1, 4, 40), np.int8))


def test_litert_is_safe_from_many_threads() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(-128, 127, (1, 3, 40)).astype(np.int8) for _ in range(32)]
    with edgeinfer.load(MODEL) as model:
        # A stateful streaming model: compare with a fresh state before every call.
        def one(f: np.ndarray) -> np.ndarray:
            return next(iter(model.predict(f).values()))

        model.backend.reset_state()  # type: ignore[attr-defined]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, frames))
    assert all(r.shape == (1, 1) for r in results)


def test_reset_state_makes_streaming_runs_repeatable() -> None:
    rng = np.random.default_rng(1)
    clip = [rng.integers(-128, 127, (1, 3, 40)).astype(np.int8) for _ in range(40)]
    with edgeinfer.load(MODEL) as model:

        def stream() -> list[int]:
            model.backend.reset_state()  # type: ignore[attr-defined]
            return [int(next(iter(model.predict(f).values()))[0, 0]) for f in clip]

        assert stream() == stream()


def test_dynamic_model_that_cannot_prepare_at_its_placeholder_shape() -> None:
    """openWakeWord's melspectrogram declares [-1,-1] audio stored as [1,1]: one sample is too
    short for its STFT, so the graph is prepared at the first call's length instead."""
    oww = pytest.importorskip("wyoming_openwakeword", reason="wyoming-openwakeword (--no-deps)")
    path = Path(oww.__file__).parent / "models" / "melspectrogram.tflite"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    audio = np.random.default_rng(2).uniform(-3000, 3000, (1, 1280)).astype(np.float32)
    with edgeinfer.load(path) as model:
        assert model.inputs[0].shape == (None, None)
        first = next(iter(model.predict(audio).values()))
        assert first.shape == (1, 1, 5, 32)
        with pytest.raises(BackendError, match="LiteRT inference failed"):
            model.predict(audio[:, :1])  # too short for one frame: an error, not a crash
        again = next(iter(model.predict(audio).values()))  # and the model still works
        np.testing.assert_array_equal(first, again)
        longer = next(iter(model.predict(np.tile(audio, 2)).values()))
        assert longer.shape[2] > first.shape[2]
