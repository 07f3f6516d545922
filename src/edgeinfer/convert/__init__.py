"""Conversion of framework models to ONNX: the first step of the build side.

``torch_to_onnx`` (the ``torch`` extra) and ``sklearn_to_onnx`` (the ``sklearn`` extra)
write an ONNX file the installed ONNX Runtime loads and check its outputs against the
original model. Neither imports its framework until called. Failures raise
:class:`ConversionError` with the converter's exception as the cause; a missing extra
raises ``MissingDependencyError`` with the install hint.
"""

from __future__ import annotations

from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.onnx_io import cap_ir_version, load_onnx, max_ir_version, save_onnx
from edgeinfer.convert.sklearn import sklearn_to_onnx
from edgeinfer.convert.torch import ConversionReport, torch_to_onnx

__all__ = [
    "ConversionError",
    "ConversionReport",
    "cap_ir_version",
    "load_onnx",
    "max_ir_version",
    "save_onnx",
    "sklearn_to_onnx",
    "torch_to_onnx",
]
