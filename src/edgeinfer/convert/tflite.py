"""``.tflite`` files: inspect, run with float I/O, and convert to ONNX with tf2onnx.

:func:`run_tflite` runs a model on LiteRT (``ai-edge-litert``), feeding float inputs to an
integer-I/O model through its quantization parameters and returning float outputs, so that
parity checks and evaluations compare like with like. :func:`inspect_tflite` lists the
model's tensors and operators and says whether it is already quantized.

:func:`tflite_to_onnx` uses tf2onnx's TFLite path (best effort): operators tf2onnx has no
handler for are named in the :class:`ConversionError` before it tries. The ONNX model keeps
the TFLite tensor names and the source's layout (NHWC stays NHWC); its outputs are checked
against LiteRT's on sample inputs.

>>> from edgeinfer.convert import tflite_to_onnx
>>> tflite_to_onnx("wake.tflite", "wake.onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert._tf import InputSpec, check_parity, import_tf2onnx, quiet, sample_feeds
from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.onnx_io import save_onnx
from edgeinfer.convert.torch import ConversionReport
from edgeinfer.errors import InputError, MissingDependencyError

__all__ = [
    "TFLiteInfo",
    "inspect_tflite",
    "open_interpreter",
    "run_tflite",
    "tflite_to_onnx",
    "to_float",
    "to_model_dtype",
]

DEFAULT_OPSET = 17
_INT = ("int8", "uint8", "int16")
# (atol, min cosine) of tflite_to_onnx's parity check: float sources convert exactly up to
# kernel rounding; integer ones differ by a quantization step or two where ONNX Runtime's
# QDQ kernels round differently from LiteRT's.
_FLOAT_TOLERANCE = (1e-4, 0.9999)
_INT_TOLERANCE = (1e-2, 0.999)


def open_interpreter(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "litert", "Running .tflite models") from exc
    try:
        return Interpreter(model_path=os.fspath(path), num_threads=threads)
    except ValueError as exc:
        raise InputError(f"{path}: not a loadable TFLite model ({exc})") from exc


@dataclass(frozen=True)
class TFLiteInfo:
    """What a ``.tflite`` file holds."""

    inputs: tuple[InputSpec, ...]  # tensor names, as tf2onnx keeps them
    outputs: tuple[str, ...]
    ops: tuple[str, ...]  # builtin operator names (custom ops by their custom name)
    quantized: bool  # integer kernels (int8/uint8/int16 weights or activations) or float16
    int_io: bool  # an input or output is an integer tensor with quantization parameters
    # float16 weights dequantized to float32 at load, no integer tensors: float arithmetic
    # throughout (MediaPipe's models ship so); ``quantized`` is True for them too
    float16_weights: bool = False


def inspect_tflite(path: str | os.PathLike[str]) -> TFLiteInfo:
    interp = open_interpreter(path)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    try:
        ops = tuple(sorted({str(d["op_name"]) for d in interp._get_ops_details()}))
        tensors = interp.get_tensor_details()
    except Exception:  # very old files; the op list is only for messages
        ops, tensors = (), []
    integer = any(
        np.dtype(t["dtype"]).name in _INT
        and (t["quantization"][0] != 0.0 or len(t["quantization_parameters"]["scales"]) > 0)
        for t in tensors
    ) or ("QUANTIZE" in ops)
    half = any(np.dtype(t["dtype"]) == np.float16 for t in tensors)
    quantized = integer or half or "DEQUANTIZE" in ops
    int_io = any(np.dtype(d["dtype"]).name in _INT and d["quantization"][0] for d in ins + outs)
    specs = tuple(
        InputSpec(
            str(d["name"]),
            tuple(
                None if int(x) < 0 else int(x)
                for x in (
                    d.get("shape_signature") if len(d.get("shape_signature", ())) else d["shape"]
                )
            ),
            np.dtype(d["dtype"]).name,
        )
        for d in ins
    )
    outputs = tuple(str(d["name"]) for d in outs)
    return TFLiteInfo(specs, outputs, ops, quantized, int_io, half and not integer)


def to_model_dtype(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.name in _INT and scale and np.issubdtype(value.dtype, np.floating):
        info = np.iinfo(dtype)
        q = np.round(value / scale + zero)
        return np.asarray(np.clip(q, info.min, info.max), dtype=dtype)
    return np.asarray(value).astype(dtype, copy=False)


def to_float(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).name in _INT and scale:
        return np.asarray((value.astype(np.float32) - zero) * scale, dtype=np.float32)
    return value


def run_tflite(
    path: str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    *,
    signature: bool = False,
    threads: int | None = None,
    interpreter: Any = None,
) -> dict[str, np.ndarray]:
    """Run on ``feeds`` (float values are quantized for integer inputs); float outputs.

    ``signature``: feed and read by the serving signature's names (``pixels``,
    ``output_0``), as a converted Keras model is called; otherwise by tensor names.
    """
    interp = interpreter if interpreter is not None else open_interpreter(path, threads)
    if signature:
        runner = interp.get_signature_runner()
        details = runner.get_input_details()
        args = {k: to_model_dtype(np.asarray(v), details[k]) for k, v in feeds.items()}
        got = runner(**args)
        out_details = runner.get_output_details()
        return {k: to_float(np.asarray(v), out_details[k]) for k, v in got.items()}
    ins = {str(d["name"]): d for d in interp.get_input_details()}
    for name, value in feeds.items():
        if name not in ins:
            raise InputError(f"{path}: no input {name!r}; the model has {', '.join(ins)}")
        if tuple(value.shape) != tuple(ins[name]["shape"]):
            interp.resize_tensor_input(ins[name]["index"], value.shape)
    interp.allocate_tensors()
    for name, value in feeds.items():
        interp.set_tensor(ins[name]["index"], to_model_dtype(np.asarray(value), ins[name]))
    interp.invoke()
    return {
        str(d["name"]): to_float(np.array(interp.get_tensor(d["index"])), d)
        for d in interp.get_output_details()
    }


def _unsupported(ops: Sequence[str]) -> list[str]:
    from tf2onnx.handler import tf_op

    handled = {name for domain in tf_op.get_opsets().values() for opset in domain for name in opset}
    return [op for op in ops if f"TFL_{op}" not in handled]


def tflite_to_onnx(
    src: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    inputs: Sequence[np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float | None = None,  # parity tolerance (absolute, scaled by outputs above 1)
    min_cosine: float | None = None,
) -> ConversionReport:
    """Convert a ``.tflite`` file to ONNX with tf2onnx and check it against LiteRT.

    ``inputs``: sample arrays in the model's input order (batch on axis 0); random ones in
    the model's own shapes are made when not given. The tolerance is 1e-4 and cosine 0.9999
    for a float model; for an integer-quantized one 1e-2 (about two and a half int8 steps
    of the output's range: ONNX Runtime's QDQ kernels round differently from LiteRT's) and
    cosine 0.999.
    """
    path = Path(src)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    started = time.perf_counter()
    info = inspect_tflite(path)
    tf2onnx = import_tf2onnx("Converting a .tflite model to ONNX")
    missing = _unsupported(info.ops)
    if missing:
        raise ConversionError(
            f"{path}: tf2onnx cannot convert the TFLite operator(s) {', '.join(missing)} "
            "(no ONNX equivalent in tf2onnx); keep the model as .tflite (LiteRT runs it)"
        )
    interp = open_interpreter(path)
    in_details = {str(d["name"]): d for d in interp.get_input_details()}
    out_details = {str(d["name"]): d for d in interp.get_output_details()}
    floats = sample_feeds(info.inputs, inputs, batch=1)
    feeds = {k: to_model_dtype(v, in_details[k]) for k, v in floats.items()}  # int I/O: quantized
    try:
        want = run_tflite(path, feeds, interpreter=interp)
    except RuntimeError as exc:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise InputError(
            f"{path}: LiteRT cannot run the model on sample inputs of shapes {shapes} "
            f"({str(exc).splitlines()[0][:120]}); give real sample inputs (--inputs FILE)"
        ) from exc
    try:
        with quiet():
            proto, _ = tf2onnx.convert.from_tflite(os.fspath(path), opset=opset)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionError(f"{path}: tf2onnx could not convert the model: {first}") from exc
    dest = save_onnx(proto, out_path)
    ran = _run_onnx(dest, feeds, list(want))
    got = [to_float(x, out_details[n]) for x, n in zip(ran, want, strict=True)]
    integer = info.quantized and not info.float16_weights
    tol_abs, tol_cos = _INT_TOLERANCE if integer else _FLOAT_TOLERANCE
    parity = check_parity(
        want,
        got,
        where=str(dest),
        atol=tol_abs if atol is None else atol,
        min_cosine=tol_cos if min_cosine is None else min_cosine,
    )
    layout = "NHWC" if any(len(s.shape) == 4 for s in info.inputs) else ""
    notes = []
    if info.float16_weights:
        notes.append(
            "the source has float16 weights: they are float32 in the ONNX model (twice the "
            "size; edgeinfer optimize finds the smaller variants)"
        )
    elif info.quantized:
        notes.append("the source is quantized: tf2onnx writes its integer operators as QDQ")
    notes.append(f"converted in {time.perf_counter() - started:.2f} s")
    return ConversionReport(
        dest,
        opset,
        tuple(feeds),
        tuple(want),
        parity.max_abs_error,
        parity.cosine,
        layout,
        "onnx",
        tuple(notes),
    )


def _run_onnx(path: Path, feeds: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        return [np.asarray(x) for x in session.run(names, dict(feeds))]
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionError(
            f"{path}: ONNX Runtime cannot run the converted model: {first}"
        ) from exc
