"""The LiteRT backend (``ai-edge-litert``) for ``.tflite`` models.

A LiteRT interpreter holds its tensors in one arena and is not safe to use from two
threads at once, so each call runs under a lock; several threads still get correct
results, one at a time. The interpreter is shared, not per thread, because a streaming
model (a wake-word detector) keeps its state in it: every call must see the last one's.
Inputs with dynamic dimensions (``shape_signature`` -1) are resized when a call's shape
differs from the last one.

A call is priced against the bare interpreter's ``set_tensor``/``invoke``/``get_tensor``
(about 8 us on a wake-word model), so the hot path does no work per call that can be
done once: tensor indices, names and the interpreter's bound methods are looked up when
the interpreter is created, and ``LiteRTBackend.run_one`` serves a one-input model whose
input :class:`~edgeinfer.runtime.Model` has already checked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

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


class _Calls(NamedTuple):
    """What a call does to the interpreter, as bound methods (the cheapest to call)."""

    set_tensor: Callable[[int, np.ndarray], object]
    invoke: Callable[[], object]
    get_tensor: Callable[[int], np.ndarray]
    resize: Callable[[int, tuple[int, ...]], object]
    allocate: Callable[[], object]


def _calls(interp: Any) -> _Calls:
    """The interpreter's native methods, which its public ones wrap.

    ``Interpreter.invoke`` (and ``allocate_tensors``, ``resize_tensor_input``) first count
    references to the native object to refuse running while a numpy view from
    ``Interpreter.tensor()`` is alive. This backend never makes such views, and holding
    the native bound methods would itself fail that count, so it calls the native methods
    directly (about 1.4 us less per call); a LiteRT without them is called through its
    public methods.
    """
    native: Any = getattr(interp, "_interpreter", None)
    names = ("SetTensor", "Invoke", "GetTensor", "ResizeInputTensor", "AllocateTensors")
    if not all(hasattr(native, m) for m in names):
        return _Calls(
            interp.set_tensor,
            interp.invoke,
            interp.get_tensor,
            interp.resize_tensor_input,
            interp.allocate_tensors,
        )

    def resize(index: int, shape: tuple[int, ...]) -> object:
        return native.ResizeInputTensor(index, np.array(shape, dtype=np.int32), False)

    return _Calls(native.SetTensor, native.Invoke, native.GetTensor, resize, native.AllocateTensors)


def _closed(path: str) -> _Calls:
    def refuse(*_: object) -> Any:
        raise BackendError(f"{path}: the model is closed")

    return _Calls(refuse, refuse, refuse, refuse, refuse)


class LiteRTBackend:
    """One ``.tflite`` model in one LiteRT ``Interpreter``."""

    name = "litert"
    providers: tuple[str, ...] = ("LiteRT CPU (XNNPACK)",)  # the only delegate used here

    def __init__(self, model: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.path = os.fspath(model)
        self._threads = threads
        self._lock = threading.Lock()
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
        self._dynamic = any(s.shape is None or None in s.shape for s in self.inputs)
        # run_one: the single input's index and every output's (name, index), in order.
        self._in0 = None
        if len(self.inputs) == 1:
            self._in0 = (self.inputs[0].name, self._in_index[self.inputs[0].name])
        self._outs = tuple((s.name, self._out_index[s.name]) for s in self.outputs)
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._calls = _calls(self._interp)
        self.run_one: Callable[[np.ndarray], dict[str, np.ndarray] | None]
        self.run_one_checks_shape = self._in0 is not None and not self._dynamic
        self._bind()

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
            set_tensor, invoke, get_tensor, _, _ = self._calls
            try:
                if self._dynamic:
                    shapes = self._shapes
                    for name, value in feeds.items():
                        if value.shape != shapes.get(name):
                            self._resize(feeds)
                            break
                index = self._in_index
                for name, value in feeds.items():
                    set_tensor(index[name], value)
                invoke()
                out = self._out_index
                return [get_tensor(out[n]) for n in output_names]
            except BackendError:
                raise
            except Exception as exc:
                raise self._failed(exc) from exc

    def _bind(self) -> None:
        """Build ``run_one`` for the current interpreter (in ``__init__``, or under the lock).

        ``run_one`` runs a one-input model: the fast path of :meth:`Model.predict
        <edgeinfer.runtime.Model.predict>`, every output by name in the model's order. For a
        model of fixed shapes (``run_one_checks_shape``) it takes an array of the input's
        exact dtype unchecked: LiteRT's ``SetTensor`` compares its shape with the tensor's
        (and copies a non-contiguous array), and a refused array makes ``run_one`` return
        ``None`` for the caller to validate it (and raise the one-line error). It is then
        a closure over the interpreter's native methods, the indices and the lock's bound
        methods: no attribute lookups on a call that costs 8 us.
        """
        in0, outs = self._in0, self._outs
        if in0 is None or self._dynamic:
            self.run_one = self._run_one
            return
        set_tensor, invoke, get_tensor, _, _ = self._calls
        acquire, release, failed = self._acquire, self._release, self._failed
        index, (name, out) = in0[1], outs[0] if outs else ("", -1)
        single = len(outs) == 1

        def run_one(value: np.ndarray) -> dict[str, np.ndarray] | None:
            acquire()
            try:
                try:
                    set_tensor(index, value)
                except ValueError:
                    return None  # a shape (or type) the tensor does not have
                invoke()
                if single:
                    return {name: get_tensor(out)}
                return {n: get_tensor(i) for n, i in outs}
            except BackendError:
                raise
            except Exception as exc:
                raise failed(exc) from exc
            finally:
                release()

        self.run_one = run_one

    def _run_one(self, value: np.ndarray) -> dict[str, np.ndarray]:
        """``run_one`` for a model with dynamic inputs: its caller checked the input (any
        shape the signature allows is resized to)."""
        in0 = self._in0
        if in0 is None:
            raise BackendError(f"{self.path}: run_one needs a one-input model")
        with self._lock:
            set_tensor, invoke, get_tensor, _, _ = self._calls
            try:
                if self._dynamic and value.shape != self._shapes.get(in0[0]):
                    self._resize({in0[0]: value})
                set_tensor(in0[1], value)
                invoke()
                return {name: get_tensor(index) for name, index in self._outs}
            except BackendError:
                raise
            except Exception as exc:
                raise self._failed(exc) from exc

    def _failed(self, exc: Exception) -> BackendError:
        return BackendError(f"{self.path}: LiteRT inference failed: {exc}")

    def _resize(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Resize dynamic inputs to this call's shapes (caller holds the lock)."""
        calls = self._calls
        for name, value in feeds.items():
            if value.shape != self._shapes.get(name):
                calls.resize(self._in_index[name], value.shape)
        try:
            calls.allocate()
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
            self._calls = _calls(self._interp)
            self._bind()

    def close(self) -> None:
        with self._lock:
            self._interp = None
            self._calls = _closed(self.path)
            self._bind()
