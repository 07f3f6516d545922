"""The contract every inference backend implements.

A backend owns one loaded model in one runtime (ONNX Runtime, LiteRT) and does exactly
one thing: run already-validated arrays. Validation, naming and the public ``Model`` API
live in :mod:`edgeinfer.runtime.model`, so a new backend stays small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from edgeinfer.tensors import TensorSpec

__all__ = ["Backend"]


class Backend(Protocol):
    """One loaded model in one runtime."""

    name: str  # "onnxruntime" or "litert"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...]  # what actually runs the model, best first

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Run the model on validated ``feeds``; return the named outputs in order.

        Safe to call from several threads at once. Raises ``BackendError`` on failure.
        """
        ...

    def close(self) -> None:
        """Release the runtime's resources; the backend cannot run afterwards."""
        ...
