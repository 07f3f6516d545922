"""The one error tree of edgeinfer.

Every error edgeinfer raises on purpose is an ``EdgeInferError``. Catch the root to
handle all of them, or a leaf to handle one kind::

    EdgeInferError
    ├── InputError              bad inputs from the caller: names the input, what was
    │                           expected (dtype/shape) and what it got  (also a ValueError)
    ├── BundleError             a bundle or model file that is missing, corrupt, tampered
    │                           with, or of an unsupported format or schema version
    ├── BackendError            the runtime (ONNX Runtime, LiteRT) failed; the backend's own
    │   │                       exception is kept as ``__cause__``
    │   └── ProviderError       an execution provider was asked for that is not available
    └── MissingDependencyError  an optional extra is not installed; says what to install
                                (also an ImportError)

"Untrusted input is bad" (``InputError``, ``BundleError``) is kept apart from "the
machinery failed" (``BackendError``), as python-tuf keeps ``RepositoryError`` apart from
``DownloadError``. Later parts of edgeinfer hang their own branches under the root.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BundleError",
    "EdgeInferError",
    "InputError",
    "MissingDependencyError",
    "ProviderError",
]


class EdgeInferError(Exception):
    """Root of every error edgeinfer raises on purpose."""


class InputError(EdgeInferError, ValueError):
    """The caller's inputs do not match what the model expects."""


class BundleError(EdgeInferError):
    """A bundle or model file is missing, corrupt, tampered with or unsupported."""


class BackendError(EdgeInferError):
    """The inference runtime failed; the runtime's own exception is the ``__cause__``."""


class ProviderError(BackendError):
    """An execution provider was requested that this machine cannot use."""


class MissingDependencyError(EdgeInferError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'edgeinfer[{extra}]'"
        )
