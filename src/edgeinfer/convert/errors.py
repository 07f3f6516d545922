"""Errors of the conversion step (framework model -> ONNX).

``ConversionError`` hangs under the root of edgeinfer's error tree::

    EdgeInferError
    └── ConversionError   a framework model could not be converted to ONNX, or the
                          converted model does not reproduce the original's outputs;
                          the converter's own exception is kept as ``__cause__``
"""

from __future__ import annotations

from edgeinfer.errors import EdgeInferError

__all__ = ["ConversionError"]


class ConversionError(EdgeInferError):
    """A model failed to convert to ONNX, or the ONNX model disagrees with the original."""
