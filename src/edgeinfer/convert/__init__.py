"""Conversion of framework models to ONNX and TFLite: the first step of the build side.

``torch_to_onnx`` (the ``torch`` extra) and ``sklearn_to_onnx`` (the ``sklearn`` extra)
write an ONNX file the installed ONNX Runtime loads and check its outputs against the
original model; ``torch_to_tflite`` writes a ``.tflite`` with litert-torch (installed by
the Makefile: its pins clash with the extras) and checks it on LiteRT. ``keras_to_onnx``,
``keras_to_tflite`` and ``tflite_to_onnx`` (the ``tensorflow`` extra) do the same for Keras
models, SavedModels and ``.tflite`` files.
None imports its framework until called. Failures raise :class:`ConversionError` with the
converter's exception as the cause; a missing extra raises ``MissingDependencyError`` with
the install hint.
"""

from __future__ import annotations

from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.keras import keras_to_onnx, keras_to_tflite
from edgeinfer.convert.onnx_io import cap_ir_version, load_onnx, max_ir_version, save_onnx
from edgeinfer.convert.sklearn import sklearn_to_onnx
from edgeinfer.convert.tflite import inspect_tflite, tflite_to_onnx
from edgeinfer.convert.torch import ConversionReport, torch_to_onnx
from edgeinfer.convert.torch_tflite import torch_to_tflite

__all__ = [
    "ConversionError",
    "ConversionReport",
    "cap_ir_version",
    "inspect_tflite",
    "keras_to_onnx",
    "keras_to_tflite",
    "load_onnx",
    "max_ir_version",
    "save_onnx",
    "sklearn_to_onnx",
    "tflite_to_onnx",
    "torch_to_onnx",
    "torch_to_tflite",
]
