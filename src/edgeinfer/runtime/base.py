"""The contract every inference backend implements.

A backend owns one loaded model in one runtime (ONNX Runtime, LiteRT) and does exactly
one thing: run already-validated arrays. Validation, naming and the public ``Model`` API
live in :mod:`edgeinfer.runtime.model`, so a new backend stays small.

A backend may also offer ``run_one(array) -> dict | None`` for a one-input model, which
``Model.predict`` calls instead of ``run`` (LiteRT's, where a call costs microseconds); with
``run_one_checks_shape = True`` it is given arrays of the input's exact dtype unchecked and
returns ``None`` for one whose shape the runtime refuses, so that ``Model`` says why.
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
