"""edgeinfer: run machine-learning models where the data is.

The public face of the package. Optimize a model, ship it as a :class:`Bundle`, run it
locally with :func:`load`, and (with the extras) serve or offload it.

>>> import edgeinfer
>>> model = edgeinfer.load("bundles/digits-cnn")          # doctest: +SKIP
>>> model.predict(images)["logits"].argmax(axis=1)        # doctest: +SKIP
"""

from edgeinfer._version import __version__
from edgeinfer.bundle import Bundle, Golden, Manifest
from edgeinfer.errors import (
    BackendError,
    BundleError,
    EdgeInferError,
    InputError,
    MissingDependencyError,
    ProviderError,
)
from edgeinfer.runtime import Model, available_providers, load
from edgeinfer.tensors import TensorSpec

# Names from optional parts, imported on first use so that `import edgeinfer` needs only
# the core install (the offloading client needs the `serve` extra's httpx and grpcio).
_LAZY = {
    "GenerativeOffloader": "edgeinfer.offload",
    "Offloader": "edgeinfer.offload",
    "Prediction": "edgeinfer.offload",
    "RemoteError": "edgeinfer.offload",
    "RemoteModel": "edgeinfer.offload",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeinfer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BackendError",
    "Bundle",
    "BundleError",
    "EdgeInferError",
    "GenerativeOffloader",
    "Golden",
    "InputError",
    "Manifest",
    "MissingDependencyError",
    "Model",
    "Offloader",
    "Prediction",
    "ProviderError",
    "RemoteError",
    "RemoteModel",
    "TensorSpec",
    "__version__",
    "available_providers",
    "load",
]
