"""Which backend runs a model file: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite``.

The choice needs only the file's format (:func:`~edgeinfer.manifest.model_format`), so
it sits below both the bundle (which reads a model's signature and records its golden
outputs through a backend) and :class:`~edgeinfer.runtime.Model` (which loads bundles).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from edgeinfer.errors import ProviderError
from edgeinfer.manifest import model_format
from edgeinfer.runtime.base import Backend
from edgeinfer.runtime.providers import normalize

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

        # LiteRT runs here on its CPU (XNNPACK) delegate only: a request for an accelerator
        # must not be met silently on the CPU.
        names = [providers] if isinstance(providers, str) else list(providers or ())
        wanted = [n for n in names if n != "auto" and normalize(n) != "CPUExecutionProvider"]
        if wanted and not fallback:
            raise ProviderError(
                f"{os.fspath(path)}: execution provider(s) {', '.join(map(repr, wanted))} "
                "not available for .tflite models; LiteRT runs them on its CPU (XNNPACK) "
                "delegate here (accept with fallback=True, --fallback on the command line)"
            )

        return LiteRTBackend(path, threads=threads)
    from edgeinfer.runtime.onnx import OnnxBackend

    return OnnxBackend(path, providers=providers, fallback=fallback, threads=threads, **options)
