"""Keras models and TensorFlow SavedModels -> ONNX (tf2onnx) or TFLite (TFLiteConverter).

Sources: a Keras model object, a Keras 3 ``.keras`` file, a legacy ``.h5`` file, or a
SavedModel directory. Every route goes through a SavedModel with an explicit input
signature (:func:`~edgeinfer.convert._tf.load_source`): tf2onnx's ``from_keras`` fails on
Keras 3 models without one.

- :func:`keras_to_onnx`: tf2onnx on the serving function; ONNX inputs and outputs are named
  after the signature (``pixels`` in, ``output_0`` out).
- :func:`keras_to_tflite`: ``TFLiteConverter`` with TFLite's builtin operators only; Flex
  (TensorFlow) operators only with ``flex=True``, with a warning that the device needs the
  Flex delegate. ``quantize`` makes the post-training variants edgeinfer's LiteRT search
  measures: ``dynamic`` (INT8 weights), ``float16`` (FP16 weights), ``int8`` (full integer
  with float I/O, calibrated), ``int8-io`` (full integer with int8 inputs and outputs).

Layout stays the source's (a Keras image model is NHWC in and NHWC out: no transposes are
added) and is recorded in the report. Each result is checked on sample inputs against the
source framework (max absolute error, cosine); quantized variants get looser tolerances,
for their error is the price asked for, not a broken conversion.

>>> from edgeinfer.convert import keras_to_onnx, keras_to_tflite
>>> keras_to_onnx("digits.keras", "digits.onnx")                      # doctest: +SKIP
>>> keras_to_tflite("digits.keras", "digits.tflite", quantize="int8",
...                 calibration=[x_train[:200]])                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer._atomic import replacing
from edgeinfer.convert._tf import (
    TFSource,
    check_parity,
    import_tf,
    import_tf2onnx,
    load_source,
    quiet,
    sample_feeds,
)
from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.onnx_io import save_onnx
from edgeinfer.convert.tflite import run_tflite
from edgeinfer.convert.torch import ConversionReport
from edgeinfer.errors import InputError

__all__ = ["QUANTIZE_MODES", "FlexOpsWarning", "keras_to_onnx", "keras_to_tflite"]

DEFAULT_OPSET = 17
QUANTIZE_MODES = ("dynamic", "float16", "int8", "int8-io")
# (atol, min cosine) of the parity check per TFLite variant: float32 is exact up to
# kernel rounding; the quantized ones only have to be recognisably the same model.
_TOLERANCE = {
    None: (1e-4, 0.9999),
    "float16": (1e-2, 0.999),
    "dynamic": (0.25, 0.98),
    "int8": (0.25, 0.98),
    "int8-io": (0.25, 0.98),
}


class FlexOpsWarning(UserWarning):
    """The TFLite model needs TensorFlow (Flex) operators: the device needs the Flex delegate."""


def _rename_outputs(proto: Any, names: Sequence[str]) -> None:
    """Name the ONNX outputs after the signature's outputs (tf2onnx says ``Identity:0``)."""
    renames = {
        o.name: new for o, new in zip(proto.graph.output, names, strict=True) if o.name != new
    }
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in proto.graph.output:
        value.name = renames.get(value.name, value.name)


def keras_to_onnx(
    model: Any,
    out_path: str | os.PathLike[str],
    *,
    inputs: Sequence[np.ndarray] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,  # parity tolerance (absolute, scaled by outputs above 1)
    min_cosine: float = 0.9999,
) -> ConversionReport:
    """Convert a Keras model or SavedModel to ONNX with tf2onnx and check it.

    ``inputs``: sample arrays in the signature's input order (batch on axis 0); random ones
    made from the signature when not given. A subclassed model that has never been called
    (built without shapes, weights set) needs them: it is run on them once and exported
    with their shapes, the batch axis left open.
    """
    tf = import_tf("Converting a Keras or TensorFlow model")
    tf2onnx = import_tf2onnx()
    if not 9 <= opset <= 21:
        raise InputError(f"opset {opset} is not supported; choose 9..21 (default 17)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeinfer-keras-") as tmp:
        source = load_source(model, Path(tmp), inputs)
        feeds = sample_feeds(source.inputs, inputs)
        want = source.run(feeds)
        names = [s.name for s in source.inputs]
        specs = [
            tf.TensorSpec(list(s.shape), tf.as_dtype(s.dtype), name=s.name) for s in source.inputs
        ]
        serve, outputs = source.serve_fn, source.outputs

        def call(*args: Any) -> list[Any]:
            out = serve(**dict(zip(names, args, strict=True)))
            return [out[k] for k in outputs]

        try:
            with quiet():
                fn = tf.function(call, input_signature=specs)
                proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConversionError(
                f"{source.path}: tf2onnx could not convert the model: {first}"
            ) from exc
    _rename_outputs(proto, outputs)
    dest = save_onnx(proto, out_path)
    got = _run_onnx(dest, feeds, list(outputs))
    parity = check_parity(want, got, where=str(dest), atol=atol, min_cosine=min_cosine)
    return ConversionReport(
        dest,
        opset,
        tuple(names),
        tuple(outputs),
        parity.max_abs_error,
        parity.cosine,
        source.layout,
        "onnx",
        (f"converted in {time.perf_counter() - started:.2f} s",),
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


def _calibration_rows(
    source: TFSource, calibration: Any, feeds: Mapping[str, np.ndarray], limit: int = 200
) -> list[dict[str, np.ndarray]]:
    """One dict per calibration sample (batch of one), in the signature's names."""
    if calibration is None:
        arrays = dict(feeds)
    elif isinstance(calibration, Mapping):
        arrays = {s.name: np.asarray(calibration[s.name]) for s in source.inputs}
    else:
        given = calibration if isinstance(calibration, (list, tuple)) else [calibration]
        arrays = sample_feeds(source.inputs, [np.asarray(a) for a in given])
    n = min(len(a) for a in arrays.values())
    if n == 0:
        raise InputError("calibration data is empty; give a few hundred typical inputs")
    return [
        {k: a[i : i + 1].astype(np.float32, copy=False) for k, a in arrays.items()}
        for i in range(min(n, limit))
    ]


def keras_to_tflite(
    model: Any,
    out_path: str | os.PathLike[str],
    *,
    inputs: Sequence[np.ndarray] | None = None,
    quantize: str | None = None,
    calibration: Any = None,
    flex: bool = False,
    atol: float | None = None,  # parity tolerance; the default depends on ``quantize``
    min_cosine: float | None = None,
) -> ConversionReport:
    """Convert a Keras model or SavedModel to TFLite with ``TFLiteConverter`` and check it.

    ``calibration``: arrays (in input order, or a dict by input name) for the ``int8``
    modes; the sample inputs are used when not given (a warning says so: calibrate on real
    data). ``flex``: allow TensorFlow operators TFLite has no builtin for.
    """
    tf = import_tf("Converting a Keras or TensorFlow model to TFLite")
    if quantize not in (None, *QUANTIZE_MODES):
        raise InputError(
            f"quantize={quantize!r} is not a TFLite variant; expected one of "
            f"{', '.join(QUANTIZE_MODES)} (or none for float32)"
        )
    tol_abs, tol_cos = _TOLERANCE[quantize]
    started = time.perf_counter()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeinfer-keras-") as tmp:
        source = load_source(model, Path(tmp), inputs)
        feeds = sample_feeds(source.inputs, inputs)
        want = source.run(feeds)
        with quiet():
            converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(source.saved_model))
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize in ("int8", "int8-io"):
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            rows = _calibration_rows(source, calibration, feeds)
            if calibration is None:
                notes.append("calibrated on the sample inputs: give calibration= real data")

            def representative() -> Iterator[dict[str, np.ndarray]]:
                yield from rows

            converter.representative_dataset = representative
            if quantize == "int8-io":
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if flex:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = ops
        try:
            with quiet():
                flat = converter.convert()
        except Exception as exc:
            raise ConversionError(_converter_message(source.path, exc, flex)) from exc
    dest = Path(out_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest, suffix=".tmp") as tmp_file:
        Path(tmp_file).write_bytes(flat)
    if flex:
        warnings.warn(
            f"{dest}: Flex (TensorFlow) operators were allowed; a device needs LiteRT's Flex "
            "delegate to run them (a larger runtime)",
            FlexOpsWarning,
            stacklevel=2,
        )
    try:
        got = run_tflite(dest, feeds, signature=True)
    except RuntimeError as exc:
        if not (flex and "Flex" in str(exc)):
            raise ConversionError(f"{dest}: LiteRT cannot run the converted model: {exc}") from exc
        # Neither LiteRT nor TensorFlow's Python interpreter here links the Flex delegate.
        notes.append("parity not checked: running Flex operators needs the Flex delegate")
        got = None
    if got is None:
        max_err, cosine = float("nan"), float("nan")
    else:
        parity = check_parity(
            want,
            [got[k] for k in want],
            where=str(dest),
            atol=tol_abs if atol is None else atol,
            min_cosine=tol_cos if min_cosine is None else min_cosine,
        )
        max_err, cosine = parity.max_abs_error, parity.cosine
    notes.append(f"converted in {time.perf_counter() - started:.2f} s")
    return ConversionReport(
        dest,
        0,
        tuple(s.name for s in source.inputs),
        source.outputs,
        max_err,
        cosine,
        source.layout,
        "tflite",
        tuple(notes),
    )


def _converter_message(path: Path, exc: BaseException, flex: bool) -> str:
    text = str(exc)
    ops = sorted(
        {
            line.split("'tf.")[1].split("'")[0]
            for line in text.splitlines()
            if "'tf." in line and "op is neither" in line
        }
    )
    if ops and not flex:
        return (
            f"{path}: TFLite has no builtin operator for {', '.join(ops)}; pass --flex "
            "(flex=True) to keep them as TensorFlow operators (the device then needs the "
            "Flex delegate)"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    return f"{path}: TFLiteConverter could not convert the model: {first[:300]}"
