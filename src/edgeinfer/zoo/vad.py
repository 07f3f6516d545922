"""Silero VAD: the voice-activity detector ONNX model shipped in the ``silero-vad`` package.

:func:`model_path` is the package's ``silero_vad/data/silero_vad.onnx`` (opset 16), the
variant that ONNX Runtime loads as is and whose inputs and outputs are all plain tensors:

- ``input``: float32 [batch, 576] at 16 kHz: 64 samples of context (the end of the
  previous chunk, zeros at the start) followed by the 512 new samples (32 ms);
  at 8 kHz, 32 + 256 samples
- ``state``: float32 [2, batch, 128], the recurrent state; zeros at the start of a stream
- ``sr``: int64 scalar, the sample rate (16000 or 8000)
- outputs ``output`` float32 [batch, 1], the speech probability of the chunk, and
  ``stateN``, the state to feed with the next chunk.

:func:`speech_probabilities` streams a whole clip through an edgeinfer
:class:`~edgeinfer.Model` that way. The package is located without being imported (its
``__init__`` imports torch).

>>> from edgeinfer import zoo
>>> probs = zoo.vad.speech_probabilities(zoo.audio.speech_like(2.0))   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.zoo._common import ZooError, package_dir
from edgeinfer.zoo.audio import SAMPLE_RATE, speech_like, to_float

if TYPE_CHECKING:
    from edgeinfer.runtime.model import Model

__all__ = ["CHUNK", "CONTEXT", "NAME", "build", "model_path", "speech_probabilities"]

NAME = "silero-vad"
CHUNK = {16000: 512, 8000: 256}  # new samples per call, by sample rate (Hz)
CONTEXT = {16000: 64, 8000: 32}  # samples carried over from the previous chunk
STATE_SHAPE = (2, 1, 128)  # for batch 1


def model_path() -> Path:
    """``silero_vad.onnx`` inside the installed ``silero-vad`` package."""
    root = package_dir("silero_vad", "silero-vad", "models", "The Silero VAD example model")
    path = root / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ZooError(f"{path}: the installed silero-vad package has no silero_vad.onnx")
    return path


def speech_probabilities(
    audio: np.ndarray,
    model: Model | str | os.PathLike[str] | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Speech probability per chunk (32 ms at 16 kHz) of a mono clip (int16 or float).

    A trailing partial chunk is dropped. ``model``: a loaded Model, a path, or the
    packaged model (default).
    """
    from edgeinfer.runtime.model import Model, load

    if sample_rate not in CHUNK:
        raise ZooError(f"sample_rate must be 16000 or 8000 Hz, got {sample_rate!r}")
    x = to_float(np.asarray(audio))
    if x.ndim != 1:
        raise ZooError(f"audio must be one mono channel (1-D), got shape {x.shape}")
    chunk, context = CHUNK[sample_rate], CONTEXT[sample_rate]
    loaded = model if isinstance(model, Model) else load(model or model_path(), providers=["cpu"])
    state = np.zeros(STATE_SHAPE, dtype=np.float32)
    carry = np.zeros(context, dtype=np.float32)
    sr = np.array(sample_rate, dtype=np.int64)
    probs = []
    try:
        for start in range(0, len(x) - chunk + 1, chunk):
            window = np.concatenate([carry, x[start : start + chunk]])[None, :]
            out = loaded.predict({"input": window, "state": state, "sr": sr})
            state = out["stateN"]
            carry = window[0, -context:]
            probs.append(float(out["output"][0, 0]))
    finally:
        if loaded is not model:
            loaded.close()
    return np.array(probs, dtype=np.float32)


def build(out_dir: str | os.PathLike[str], version: int = 1, *, overwrite: bool = False) -> Bundle:
    """A bundle of the packaged model; golden sample: silence and speech-like audio.

    The golden inputs are two first chunks of a stream (zero state, zero context): one of
    silence and one of a synthetic voiced signal, batched.
    """
    chunk, context = CHUNK[SAMPLE_RATE], CONTEXT[SAMPLE_RATE]
    voiced = speech_like(0.25, seed=0)[2000 : 2000 + chunk]
    window = np.zeros((2, context + chunk), dtype=np.float32)
    window[1, context:] = voiced
    golden = {
        "input": window,
        "state": np.zeros((2, 2, 128), dtype=np.float32),
        "sr": np.array(SAMPLE_RATE, dtype=np.int64),
    }
    return Bundle.create(
        model_path(),
        out_dir,
        name=NAME,
        version=version,
        golden_inputs=golden,
        atol=1e-4,
        metrics={"sample_rate": SAMPLE_RATE, "chunk_samples": chunk, "context_samples": context},
        recipe={"trainer": "edgeinfer.zoo.vad", "source": "silero-vad package, silero_vad.onnx"},
        source="silero_vad/data/silero_vad.onnx",
        overwrite=overwrite,
    )
