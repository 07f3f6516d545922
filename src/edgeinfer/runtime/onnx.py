"""The ONNX Runtime backend.

Session settings that matter on devices are explicit: the execution providers (see
:mod:`edgeinfer.runtime.providers`), intra-op threads, the graph optimization level, and
thread spinning, which is off by default: spinning workers of several sessions in one
process otherwise steal each other's cores and everything slows down badly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from edgeinfer.errors import BackendError, BundleError, ProviderError
from edgeinfer.runtime.providers import resolve_providers
from edgeinfer.tensors import TensorSpec, dtype_from_onnx

__all__ = ["GraphOptimization", "OnnxBackend"]

GraphOptimization = Literal["disabled", "basic", "extended", "all"]


def _spec(arg: Any) -> TensorSpec:
    """ONNX Runtime reports a dim as an int, its ``dim_param`` string as written (Paddle's
    ``?``, shape inference's ``unk__N``) or None; TensorSpec reads the anonymous spellings
    as None, so each is its own size."""
    type_str: str = arg.type
    if not type_str.startswith("tensor("):
        raise BundleError(
            f"tensor {arg.name!r} has type {type_str}; edgeinfer runs models whose inputs "
            "and outputs are plain tensors (for scikit-learn classifiers, convert with "
            "zipmap disabled)"
        )
    shape = None if arg.shape is None else tuple(arg.shape)
    return TensorSpec(arg.name, dtype_from_onnx(type_str).name, shape)


def _load_error(path: str, exc: BaseException) -> BundleError | BackendError:
    """ONNX Runtime says 'Fail' or 'InvalidProtobuf' for files that are not models."""
    kind = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
    if kind in {
        "InvalidProtobuf",
        "InvalidGraph",
        "InvalidArgument",
        "NoSuchFile",
        "Fail",
        "NotImplemented",
        "NoModel",
    }:
        return BundleError(f"{path}: not a loadable ONNX model ({kind}: {text})")
    return BackendError(f"{path}: ONNX Runtime could not create a session ({kind}: {text})")


_STATUS = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_NESTED = re.compile(
    r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: "
)


def _run_error(exc: BaseException, limit: int = 240) -> str:
    """One line of a failed run: the innermost node's message, without the status prefix.

    A failure inside a subgraph (an ``If`` or ``Loop`` branch) comes back wrapped once per
    level, each wrapper repeating the whole message below it; only the innermost node and
    its message say what was wrong.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    # "Got invalid dimensions for input: state for the following indices" is followed by
    # the indices on further lines, then advice about fixing the model: keep the indices.
    lines = [ln for ln in lines if not ln.startswith("Please fix")]
    text = _STATUS.sub("", "; ".join(lines)) if lines else type(exc).__name__
    nodes = list(_NESTED.finditer(text))
    if nodes:
        last = nodes[-1]
        text = f"{last.group(1)} node {last.group(2)!r}: {text[last.end() :]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OnnxBackend:
    """One ONNX model in one ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: str | Sequence[str] | None = "auto",
        fallback: bool = False,
        threads: int | None = None,
        graph_optimization: GraphOptimization = "all",
        spinning: bool = False,
        provider_options: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        import onnxruntime as ort

        label = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
        chosen = resolve_providers(providers, fallback=fallback)
        opts = ort.SessionOptions()
        if threads is not None:
            if threads < 0:
                raise BackendError(f"threads must be >= 0 (0: runtime default), got {threads}")
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        try:
            opts.graph_optimization_level = levels[graph_optimization]
        except KeyError:
            raise BackendError(
                f"graph_optimization {graph_optimization!r} unknown; expected one of "
                f"{', '.join(levels)}"
            ) from None
        spin = "1" if spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        # Fatal only: ONNX Runtime logs a failing kernel as several coloured ERROR lines
        # (one per nested subgraph) before raising the same failure as an exception, which
        # is what edgeinfer reports, on one line (see _run_error).
        opts.log_severity_level = 4
        try:
            self._session = ort.InferenceSession(
                model,
                sess_options=opts,
                providers=chosen,
                provider_options=list(provider_options) if provider_options else None,
            )
        except Exception as exc:
            raise _load_error(label, exc) from exc
        in_use = tuple(self._session.get_providers())
        # ONNX Runtime drops a provider it cannot initialize (missing CUDA libraries, say)
        # with only a log line. Asked-for providers that did not come up are an error.
        lost = [p for p in chosen if p not in in_use and p != "CPUExecutionProvider"]
        if lost and not fallback and providers not in (None, "auto"):
            raise ProviderError(
                f"execution provider(s) {', '.join(lost)} failed to initialize for {label}; "
                f"the session would run on {', '.join(in_use)} (accept with fallback=True, "
                "--fallback on the command line)"
            )
        self.providers = in_use
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self.path = label

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        try:
            result: list[np.ndarray] = self._session.run(output_names, feeds)
        except Exception as exc:
            raise BackendError(f"{self.path}: inference failed: {_run_error(exc)}") from exc
        return result

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (for advanced use)."""
        return self._session
