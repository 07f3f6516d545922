"""The LiteRT backend (``ai-edge-litert``) for ``.tflite`` models.

A LiteRT interpreter holds its tensors in one arena and is not safe to use from two
threads at once, so each call runs under a lock; several threads still get correct
results, one at a time. Inputs with dynamic dimensions (``shape_signature`` -1) are
resized when a call's shape differs from the last one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeinfer.errors import BackendError, BundleError, MissingDependencyError
from edgeinfer.tensors import TensorSpec, dtype_from_numpy

__all__ = ["LiteRTBackend"]


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "litert", "Running .tflite models") from exc
    return Interpreter


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    sig = detail.get("shape_signature")
    dims = list(sig if sig is not None and len(sig) else detail["shape"])
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(str(detail["name"]), dtype_from_numpy(detail["dtype"]).name, shape)


class LiteRTBackend:
    """One ``.tflite`` model in one LiteRT ``Interpreter``."""

    name = "litert"
    providers: tuple[str, ...] = ("LiteRT CPU (XNNPACK)",)  # the only delegate used here

    def __init__(self, model: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.path = os.fspath(model)
        self._threads = threads
        self._interp, self._shapes = self._new_interpreter()
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        self.inputs = tuple(_spec(d) for d in in_details)
        self.outputs = tuple(_spec(d) for d in out_details)
        self.quantization = {
            str(d["name"]): tuple(d["quantization"]) for d in (*in_details, *out_details)
        }
        self._in_index = {str(d["name"]): int(d["index"]) for d in in_details}
        self._out_index = {str(d["name"]): int(d["index"]) for d in out_details}
        self._lock = threading.Lock()

    def _new_interpreter(self) -> tuple[Any, dict[str, tuple[int, ...]]]:
        """A fresh interpreter and the input shapes its tensors are allocated for.

        A model with dynamic inputs stores a placeholder shape (``[1, 1]`` for audio of any
        length); some graphs cannot be prepared at it (a spectrogram needs more than one
        sample). Such a model is allocated at the first call's shapes instead: the shapes
        returned are then empty, so the first call resizes.
        """
        interpreter_cls = _interpreter_class()
        try:
            interp = interpreter_cls(model_path=self.path, num_threads=self._threads)
        except ValueError as exc:
            raise BundleError(f"{self.path}: not a loadable TFLite model ({exc})") from exc
        except Exception as exc:
            raise BackendError(f"{self.path}: LiteRT could not load the model ({exc})") from exc
        details = interp.get_input_details()
        try:
            interp.allocate_tensors()
        except Exception as exc:
            if not any(-1 in list(d.get("shape_signature", ())) for d in details):
                raise BackendError(f"{self.path}: LiteRT could not load the model ({exc})") from exc
            return interp, {}
        return interp, {str(d["name"]): tuple(int(x) for x in d["shape"]) for d in details}

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        with self._lock:
            interp = self._interp
            try:
                shapes = self._shapes
                for name, value in feeds.items():
                    if value.shape != shapes.get(name):
                        self._resize(feeds)
                        break
                index = self._in_index
                for name, value in feeds.items():
                    interp.set_tensor(index[name], value)
                interp.invoke()
                out = self._out_index
                return [interp.get_tensor(out[n]) for n in output_names]
            except Exception as exc:
                raise BackendError(f"{self.path}: LiteRT inference failed: {exc}") from exc

    def _resize(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Resize dynamic inputs to this call's shapes (caller holds the lock)."""
        for name, value in feeds.items():
            if value.shape != self._shapes.get(name):
                self._interp.resize_tensor_input(self._in_index[name], value.shape)
        try:
            self._interp.allocate_tensors()
        except Exception:
            self._shapes = {}  # tensors are half-resized: the next call resizes them all
            raise
        self._shapes = {name: value.shape for name, value in feeds.items()}

    def reset_state(self) -> None:
        """Start a stateful (streaming) model, such as a wake-word detector, from scratch.

        Streaming models keep their state in resource variables that
        ``reset_all_variables`` does not clear, so the interpreter is recreated (well
        under a millisecond for the small models that stream).
        """
        with self._lock:
            self._interp, self._shapes = self._new_interpreter()

    def close(self) -> None:
        self._interp = None
