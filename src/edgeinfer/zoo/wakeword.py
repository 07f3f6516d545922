"""Wake-word spotting with the microWakeWord ``.tflite`` models of ``pymicro-wakeword``.

The package ships four streaming models (:data:`WAKE_WORDS`) with a JSON config each
(probability cutoff, sliding-window size). They run on LiteRT through edgeinfer, the
same way the package runs them:

1. :func:`features`: 16 kHz int16 audio goes through the TFLite Micro audio frontend
   (``pymicro_features``) in 10 ms chunks: one 40-channel feature row per 10 ms.
2. :func:`quantize`: rows are quantized to the model's int8 input with its scale and
   zero point, and fed three at a time (the model's stride: input int8 [1, 3, 40]).
3. Each call returns one uint8 probability, dequantized; the model keeps its streaming
   state between calls, so every clip starts from a fresh state (see :func:`probabilities`).
4. :func:`detect`: the wake word is detected when the mean of the last
   ``sliding_window_size`` probabilities exceeds the model's ``probability_cutoff``.

>>> from edgeinfer import zoo
>>> zoo.wakeword.detect(audio_int16, "okay_nabu")        # doctest: +SKIP
(True, 0.988)
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.zoo._common import ZooError, package_dir, require
from edgeinfer.zoo.audio import speech_like, to_int16

if TYPE_CHECKING:
    from edgeinfer.runtime.model import Model

__all__ = [
    "CHUNK_SAMPLES",
    "WAKE_WORDS",
    "WakeWordConfig",
    "build",
    "config",
    "detect",
    "features",
    "model_path",
    "probabilities",
    "quantize",
]

WAKE_WORDS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
CHUNK_SAMPLES = 160  # 10 ms at 16 kHz: one feature row per chunk
_PURPOSE = "The wake-word example models"


@dataclass(frozen=True)
class WakeWordConfig:
    """A model's detection settings, from the JSON file shipped beside it."""

    name: str
    wake_word: str  # the phrase, e.g. "Okay Nabu"
    probability_cutoff: float  # detection threshold on the averaged probability, 0..1
    sliding_window_size: int  # probabilities averaged (one per stride of 3 rows = 30 ms)


def _models_dir() -> Path:
    return package_dir("pymicro_wakeword", "pymicro-wakeword", "models", _PURPOSE) / "models"


def _check_name(name: str) -> str:
    if name not in WAKE_WORDS:
        raise ZooError(f"unknown wake word model {name!r}; expected one of {', '.join(WAKE_WORDS)}")
    return name


def model_path(name: str = "okay_nabu") -> Path:
    """The ``.tflite`` file of a packaged wake-word model."""
    path = _models_dir() / f"{_check_name(name)}.tflite"
    if not path.is_file():
        raise ZooError(f"{path}: the installed pymicro-wakeword package lacks this model")
    return path


def config(name: str = "okay_nabu") -> WakeWordConfig:
    """The packaged detection settings of a wake-word model."""
    path = _models_dir() / f"{_check_name(name)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        micro = data["micro"]
        return WakeWordConfig(
            name=name,
            wake_word=str(data["wake_word"]),
            probability_cutoff=float(micro["probability_cutoff"]),
            sliding_window_size=int(micro["sliding_window_size"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ZooError(f"{path}: unreadable wake-word config ({exc})") from exc


def features(audio: np.ndarray) -> np.ndarray:
    """Micro-frontend features float32 [rows, 40] of mono 16 kHz audio (one row per 10 ms).

    Float audio in [-1, 1] is converted to int16 first.
    """
    frontend_mod = require("pymicro_features", "pymicro-features", "models", _PURPOSE)
    pcm = to_int16(np.asarray(audio))
    if pcm.ndim != 1:
        raise ZooError(f"audio must be one mono channel (1-D), got shape {pcm.shape}")
    frontend = frontend_mod.MicroFrontend()
    data = pcm.astype("<i2").tobytes()
    step = CHUNK_SAMPLES * 2  # bytes
    rows = []
    offset = 0
    while offset + step <= len(data):
        result = frontend.process_samples(data[offset : offset + step])
        offset += result.samples_read * 2
        if result.features:
            rows.append(result.features)
        if result.samples_read == 0:
            break
    return np.array(rows, dtype=np.float32).reshape(-1, 40)


def quantize(rows: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Feature rows -> the model's int8 input, as microWakeWord quantizes them."""
    q = np.round(np.asarray(rows, dtype=np.float32) / scale + zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def _load(model: Model | str | os.PathLike[str] | None, name: str) -> Model:
    from edgeinfer.runtime.model import Model, load

    if isinstance(model, Model):
        return model
    return load(model if model is not None else model_path(name), threads=1)


def probabilities(audio: np.ndarray, model: Model) -> np.ndarray:
    """Raw wake-word probability per stride (30 ms) of a clip, from a fresh streaming state.

    The streaming state of a microWakeWord model lives in TFLite resource variables
    (``VAR_HANDLE``, initialized once by ``CALL_ONCE``), which the interpreter's
    ``reset_all_variables`` does not clear. So each clip runs on a fresh interpreter for
    the same model file (about half a millisecond to create for these models), exactly as
    pymicro-wakeword reloads its model to reset it.
    """
    from edgeinfer.runtime.model import Model, backend_for

    path = getattr(model.backend, "path", None)
    if model.backend.name != "litert" or path is None:
        raise ZooError("wake-word models run on the LiteRT backend (a .tflite model)")
    fresh = Model(backend_for(path, threads=1), model.bundle)
    try:
        return _stream(audio, fresh)
    finally:
        fresh.close()


def _stream(audio: np.ndarray, model: Model) -> np.ndarray:
    backend: Any = model.backend
    in_spec, out_spec = model.inputs[0], model.outputs[0]
    stride = int(in_spec.shape[1]) if in_spec.shape and isinstance(in_spec.shape[1], int) else 3
    in_scale, in_zero = backend.quantization[in_spec.name]
    out_scale, out_zero = backend.quantization[out_spec.name]
    rows = features(audio)
    probs = []
    for start in range(0, len(rows) - stride + 1, stride):
        x = quantize(rows[start : start + stride], in_scale, int(in_zero))[None, :, :]
        raw = model.predict({in_spec.name: x})[out_spec.name]
        probs.append((float(raw.reshape(-1)[0]) - out_zero) * out_scale)
    return np.array(probs, dtype=np.float32)


def detect(
    audio: np.ndarray,
    model: str | Model | os.PathLike[str] = "okay_nabu",
    *,
    cutoff: float | None = None,
    window: int | None = None,
) -> tuple[bool, float]:
    """``(detected, max_probability)`` for a mono 16 kHz clip (int16, or float in [-1, 1]).

    ``model``: a packaged model name (:data:`WAKE_WORDS`), a path to a ``.tflite`` file or
    bundle, or a loaded :class:`~edgeinfer.Model` (its file is run from a fresh state).
    ``max_probability`` is the highest sliding-window mean, the value compared with the
    cutoff. ``cutoff`` and ``window`` default to the model's packaged settings (found by
    name, by file name, or in a bundle's metrics); pass them for any other model.
    """
    named = isinstance(model, str) and model in WAKE_WORDS
    loaded = _load(None if named else model, str(model) if named else "okay_nabu")
    try:
        cutoff, window = _settings(model, loaded, cutoff, window)
        probs = probabilities(audio, loaded)
    finally:
        if loaded is not model:
            loaded.close()
    recent: deque[float] = deque(maxlen=window)
    best = 0.0
    for p in probs:
        recent.append(float(p))
        if len(recent) == window:
            best = max(best, sum(recent) / window)
    return best > cutoff, best


def _settings(
    model: object, loaded: Model, cutoff: float | None, window: int | None
) -> tuple[float, int]:
    """The cutoff and window to use: given ones first, else the model's packaged ones."""
    if cutoff is None or window is None:
        metrics = loaded.bundle.manifest.metrics if loaded.bundle is not None else {}
        stem = Path(str(getattr(loaded.backend, "path", ""))).stem
        name = model if isinstance(model, str) and model in WAKE_WORDS else stem
        if "probability_cutoff" in metrics and "sliding_window_size" in metrics:
            packaged = (float(metrics["probability_cutoff"]), int(metrics["sliding_window_size"]))
        elif name in WAKE_WORDS:
            c = config(name)
            packaged = (c.probability_cutoff, c.sliding_window_size)
        else:
            raise ZooError(
                f"no packaged detection settings for {model!r}; pass cutoff= and window="
            )
        cutoff = packaged[0] if cutoff is None else cutoff
        window = packaged[1] if window is None else window
    if not 0.0 <= cutoff <= 1.0 or not isinstance(window, int) or window < 1:
        raise ZooError(
            f"cutoff must be in [0, 1] and window an integer >= 1, got {cutoff!r}, {window!r}"
        )
    return cutoff, window


def build(
    out_dir: str | os.PathLike[str],
    name: str = "okay_nabu",
    version: int = 1,
    *,
    overwrite: bool = False,
) -> Bundle:
    """A bundle of a packaged wake-word model with its config and a golden sample.

    The golden input is the first stride of quantized features of a speech-like signal;
    since the model is stateful, the golden output holds for a freshly loaded model.
    """
    from edgeinfer.runtime.model import load

    settings = config(name)
    path = model_path(name)
    with load(path) as model:
        in_spec = model.inputs[0]
        scale, zero = model.backend.quantization[in_spec.name]  # type: ignore[attr-defined]
    rows = features(speech_like(0.5, seed=0))
    golden = quantize(rows[20:23], scale, int(zero))[None, :, :]
    return Bundle.create(
        path,
        out_dir,
        name=f"wakeword-{name.replace('_', '-')}",
        version=version,
        golden_inputs={in_spec.name: golden},
        atol=0.0,
        rtol=0.0,
        metrics={
            "probability_cutoff": settings.probability_cutoff,
            "sliding_window_size": settings.sliding_window_size,
            "stride_ms": 30,
        },
        recipe={
            "trainer": "edgeinfer.zoo.wakeword",
            "wake_word": settings.wake_word,
            "source": f"pymicro-wakeword package, models/{name}.tflite",
            "features": "pymicro_features MicroFrontend, 40 channels per 10 ms",
        },
        source=f"pymicro_wakeword/models/{name}.tflite",
        extra_files={"wakeword.json": path.with_suffix(".json")},
        overwrite=overwrite,
    )
