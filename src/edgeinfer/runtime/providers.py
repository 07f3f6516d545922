"""Choosing ONNX Runtime execution providers, never with a silent fallback.

``providers="auto"`` takes every accelerator this ONNX Runtime build can use, best first,
then the CPU. An explicit list is taken as asked: a provider that is not available is a
:class:`ProviderError` unless ``fallback=True``, in which case it is dropped with a
warning and the CPU provider is appended. Short names are accepted (``"cuda"``, ``"cpu"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from edgeinfer.errors import ProviderError

__all__ = ["PREFERENCE", "available_providers", "normalize", "resolve_providers"]

log = logging.getLogger(__name__)

# Best first. TensorRT and CUDA before the vendor NPUs/iGPUs, the CPU always last.
PREFERENCE: tuple[str, ...] = (
    "NvTensorRTRTXExecutionProvider",
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "NnapiExecutionProvider",
    "ACLExecutionProvider",
    "DnnlExecutionProvider",
    "XnnpackExecutionProvider",
    "CPUExecutionProvider",
)
# Providers that are not execution hardware and are never picked by "auto".
_NOT_HARDWARE = frozenset({"AzureExecutionProvider"})

_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "acl": "ACLExecutionProvider",
}


def available_providers() -> list[str]:
    """The providers this ONNX Runtime build can use on this machine."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def normalize(name: str) -> str:
    """``"cuda"`` -> ``"CUDAExecutionProvider"``; full names pass through."""
    return _ALIASES.get(name.lower(), name)


def resolve_providers(
    requested: str | Sequence[str] | None,
    *,
    fallback: bool = False,
    available: Sequence[str] | None = None,
) -> list[str]:
    """The provider list to hand to ONNX Runtime, best first.

    >>> resolve_providers("auto", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    avail = list(available if available is not None else available_providers())
    if requested is None or requested == "auto":
        ranked = [p for p in PREFERENCE if p in avail and p not in _NOT_HARDWARE]
        ranked += [p for p in avail if p not in ranked and p not in _NOT_HARDWARE]
        return ranked or ["CPUExecutionProvider"]
    names = [requested] if isinstance(requested, str) else list(requested)
    if not names:
        raise ProviderError("no execution provider requested; pass 'auto' or e.g. ['cpu']")
    chosen: list[str] = []
    missing: list[str] = []
    for raw in names:
        name = normalize(raw)
        if name in avail:
            if name not in chosen:
                chosen.append(name)
        else:
            missing.append(raw)
    if missing:
        message = (
            f"execution provider(s) {', '.join(map(repr, missing))} not available; "
            f"this onnxruntime build has {', '.join(avail)}"
        )
        if not fallback:
            raise ProviderError(
                message + " (run on what is available with fallback=True, --fallback on the "
                "command line)"
            )
        log.warning("%s; falling back", message)
    if not chosen or (fallback and "CPUExecutionProvider" not in chosen):
        chosen.append("CPUExecutionProvider")
    return chosen
