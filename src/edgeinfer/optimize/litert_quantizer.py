"""ai-edge-quantizer recipes on a float ``.tflite``: the LiteRT search's ``aeq-*`` candidates.

Google's ai-edge-quantizer rewrites a float TFLite model without its Keras source, so these
candidates apply to a bare float ``.tflite`` as well as to the float32 model converted from
Keras. The static recipes calibrate through the model's serving signature (their inputs and
outputs become int8/int16, fed and read through the quantization parameters like any
integer-I/O candidate). A model already quantized to integers cannot be quantized again:
:class:`~edgeinfer.optimize.errors.NotApplicable` says so, and the search skips it. A model
with float16 weights (each dequantized to float32 by a ``DEQUANTIZE`` operator, as
MediaPipe's models ship) computes in float: its weights are restored to float32
(:func:`float32_weights`) before the recipe, which otherwise finds no float weight to
quantize and returns the model unchanged.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import MissingDependencyError
from edgeinfer.optimize.errors import NotApplicable

__all__ = ["AEQ_RECIPES", "AEQRecipe", "aeq_available", "float32_weights", "quantize_tflite"]

# candidate name -> ai_edge_quantizer.recipe function
AEQ_RECIPES = {
    "aeq-weight-only-int8": "weight_only_wi8_afp32",
    "aeq-weight-only-int4": "weight_only_wi4_afp32",
    "aeq-dynamic-int8": "dynamic_wi8_afp32",
    "aeq-static-wi8-ai8": "static_wi8_ai8",
    "aeq-static-wi8-ai16": "static_wi8_ai16",
}


@dataclass(frozen=True)
class AEQRecipe:
    """The recipe step of an ``aeq-*`` candidate."""

    recipe: str  # the ai_edge_quantizer.recipe function, e.g. static_wi8_ai8
    calibration_samples: int = 0


def aeq_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_quantizer") is not None


def _signature_rows(
    model: Path, calibration: Mapping[str, np.ndarray], samples: int
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration rows keyed by the serving signature's input names (the data may be keyed
    by tensor names, as a bare ``.tflite``'s eval data is)."""
    from edgeinfer.convert.tflite import open_interpreter

    interp = open_interpreter(model)
    signatures = interp.get_signature_list()
    if not signatures:
        raise NotApplicable("the model has no serving signature to calibrate through")
    key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
    details = interp.get_signature_runner(key).get_input_details()
    by_index = {int(d["index"]): str(d["name"]) for d in interp.get_input_details()}
    names = {}
    for sig_name, detail in details.items():
        tensor = by_index.get(int(detail["index"]), sig_name)
        names[sig_name] = sig_name if sig_name in calibration else tensor
    missing = [n for n in names.values() if n not in calibration]
    if missing:
        raise NotApplicable(f"calibration data has no input {', '.join(missing)}")
    n = min(min(len(calibration[t]) for t in names.values()), samples)
    rows = [
        {s: np.asarray(calibration[t][i : i + 1], dtype=np.float32) for s, t in names.items()}
        for i in range(n)
    ]
    return {key: rows}


def _check_quantizable(model: Path, *, calibrated: bool) -> None:
    """What ai-edge-quantizer cannot take, named before it fails inside: repeated tensor
    names (its parameters are keyed by name), and, for a calibrated recipe, a model that does
    not prepare at its declared input sizes (its calibrator allocates there, before any data;
    a dynamic-length audio model's placeholder sizes are too small)."""
    from collections import Counter

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    from edgeinfer.convert.tflite import open_interpreter

    flat = tfl_flatbuffer_utils.read_model(os.fspath(model))
    names = Counter(
        tfl_flatbuffer_utils.get_tensor_name(t) for g in flat.subgraphs for t in g.tensors
    )
    repeated = sorted(n for n, c in names.items() if c > 1)
    if repeated:
        raise NotApplicable(
            f"ai-edge-quantizer needs unique tensor names; this model repeats {repeated[0]!r}"
        )
    if calibrated:
        interp = open_interpreter(model)
        try:
            interp.allocate_tensors()
        except RuntimeError as exc:
            dims = [str(list(d["shape_signature"])) for d in interp.get_input_details()]
            raise NotApplicable(
                "ai-edge-quantizer calibrates at the declared input sizes "
                f"({', '.join(dims)}), where this model does not prepare: "
                f"{str(exc).splitlines()[0]}"
            ) from exc


def float32_weights(model: Path, out: Path) -> int:
    """Write ``model`` with its float16 constant weights as float32 to ``out``: each
    ``DEQUANTIZE`` of a float16 constant is folded into a float32 constant (the same values:
    float16 -> float32 is exact) and the float16 tensor dropped. Returns how many were
    folded."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    flat = fbu.read_model(os.fspath(model))
    folded = 0
    for g_index, graph in enumerate(flat.subgraphs):
        kept, dropped = [], set()
        for op in graph.operators:
            code = fbu.get_builtin_code_from_operator_code(flat.operatorCodes[op.opcodeIndex])
            if code == schema.BuiltinOperator.DEQUANTIZE and len(op.inputs) == 1:
                src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
                buf = flat.buffers[src.buffer] if src.buffer else None
                if (
                    src.type == schema.TensorType.FLOAT16
                    and dst.type == schema.TensorType.FLOAT32
                    and buf is not None
                    and buf.data is not None
                    and len(buf.data) > 0
                ):
                    raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
                    values = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
                    restored = schema.BufferT()
                    restored.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
                    flat.buffers.append(restored)
                    dst.buffer = len(flat.buffers) - 1
                    dropped.add(int(op.inputs[0]))
                    folded += 1
                    continue
            kept.append(op)
        graph.operators = kept
        _drop_tensors(flat, g_index, dropped)
    fbu.write_model(flat, os.fspath(out))
    return folded


def _drop_tensors(flat: Any, g_index: int, dropped: set[int]) -> None:
    """Remove the tensors ``dropped`` (no operator reads them any more) from subgraph
    ``g_index`` and their buffers' data, renumbering every reference to the others."""
    graph = flat.subgraphs[g_index]
    refs = [list(graph.inputs), list(graph.outputs)]
    for op in graph.operators:
        refs += [list(op.inputs), list(op.outputs), list(op.intermediates or [])]
    used = {int(i) for r in refs for i in r}
    gone = dropped - used
    if not gone:
        return
    for i in gone:
        buffer = graph.tensors[i].buffer
        if buffer:
            flat.buffers[buffer].data = None
    new_index: dict[int, int] = {}
    tensors: list[Any] = []
    for i, tensor in enumerate(graph.tensors):
        if i not in gone:
            new_index[i] = len(tensors)
            tensors.append(tensor)
    graph.tensors = tensors

    def renumber(indices: Any) -> Any:
        return None if indices is None else [new_index[int(i)] if i >= 0 else -1 for i in indices]

    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    for op in graph.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        op.intermediates = renumber(op.intermediates)
    for sig in flat.signatureDefs or []:
        if sig.subgraphIndex == g_index:
            for item in (*(sig.inputs or []), *(sig.outputs or [])):
                item.tensorIndex = new_index[int(item.tensorIndex)]


def quantize_tflite(
    model: Path,
    candidate: str,
    out: Path,
    calibration: Mapping[str, np.ndarray] | None,
    samples: int = 128,
) -> Path:
    """Apply the ai-edge-quantizer recipe of ``candidate`` to the float ``model``."""
    from edgeinfer.convert._tf import quiet
    from edgeinfer.convert.tflite import inspect_tflite

    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise MissingDependencyError(
            "ai-edge-quantizer", "tensorflow", "The aeq-* LiteRT candidates"
        ) from exc
    info = inspect_tflite(model)
    if info.quantized and not info.float16_weights:
        raise NotApplicable("the model is already quantized; ai-edge-quantizer needs a float one")
    if info.float16_weights:
        restored = out.with_name(f"{out.stem}.float32{out.suffix}")
        float32_weights(model, restored)
        model = restored
    _check_quantizable(model, calibrated="static" in candidate)
    make = getattr(recipe, AEQ_RECIPES[candidate])
    sink = io.StringIO()  # its progress bars and size summary
    with quiet(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        qt = quantizer.Quantizer(os.fspath(model), make())
        result: Any
        if qt.need_calibration:
            if calibration is None:
                raise NotApplicable("static recipes need calibration data (--calibration)")
            rows = _signature_rows(model, calibration, samples)
            result = qt.quantize(qt.calibrate(rows, num_threads=1))
        else:
            result = qt.quantize()
        result.export_model(os.fspath(out), overwrite=True)
    return out
