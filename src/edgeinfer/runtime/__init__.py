"""The local runtime: a small ``Backend`` contract, ONNX Runtime and LiteRT backends,
and :class:`Model`, the one way to run a model on this device."""

from edgeinfer.runtime.base import Backend
from edgeinfer.runtime.model import Model, backend_for, load
from edgeinfer.runtime.providers import available_providers, resolve_providers

__all__ = ["Backend", "Model", "available_providers", "backend_for", "load", "resolve_providers"]
