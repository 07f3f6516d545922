"""Which backend runs a model file: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite``.

The choice needs only the file's format (:func:`~edgeinfer.manifest.model_format`), so
it sits below both the bundle (which reads a model's signature and records its golden
outputs through a backend) and :class:`~edgeinfer.runtime.Model` (which loads bundles).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from edgeinfer.manifest import model_format
from edgeinfer.runtime.base import Backend

__all__ = ["backend_for"]


def backend_for(
    path: str | os.PathLike[str],
    *,
    providers: str | Sequence[str] | None = "auto",
    threads: int | None = None,
    fallback: bool = False,
    **options: Any,
) -> Backend:
    """The backend that runs this model file, chosen by its suffix."""
    fmt = model_format(path)
    if fmt == "tflite":
        from edgeinfer.runtime.litert import LiteRTBackend

        return LiteRTBackend(path, threads=threads)
    from edgeinfer.runtime.onnx import OnnxBackend

    return OnnxBackend(path, providers=providers, fallback=fallback, threads=threads, **options)
