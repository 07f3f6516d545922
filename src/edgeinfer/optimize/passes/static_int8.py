"""Static INT8 quantization in QDQ format, calibrated on real inputs.

Wraps ``onnxruntime.quantization.quantize_static``: weights and activations are stored as
INT8 with scales fixed ahead of time from the ranges observed on calibration data, written
as QuantizeLinear/DequantizeLinear pairs (QDQ) that any ONNX runtime can read and ONNX
Runtime fuses into integer kernels. Convolutional networks gain most. Calibration methods:

* ``minmax``: the observed minimum and maximum (fast; outliers widen the range);
* ``entropy``: the range that minimizes the KL divergence of the quantized histogram;
* ``percentile``: clip at a percentile of the absolute values (``percentile``, e.g. 99.999).

Calibration data: a :class:`~edgeinfer.optimize.data.Dataset`, an ``.npz`` path, a dict of
arrays, or an iterable of feed dicts (an ONNX Runtime ``CalibrationDataReader`` works); it
is checked against the model's inputs before anything runs. A bad calibration set is the
classic way static INT8 collapses a model: the search measures every result.

Models exported by other tools are prepared first (:func:`prepared`, :mod:`.prepare`):
opset 13 for per-channel QDQ, one default-domain opset entry, weights as initializers. The
result is loaded once in ONNX Runtime before the pass returns, so a model it would refuse
fails here, in one line that names the node, rather than later in the search.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeinfer.convert.onnx_io import cap_ir_version, load_onnx, save_onnx
from edgeinfer.errors import InputError
from edgeinfer.optimize.data import DataSource, calibration_reader, load_dataset, model_specs
from edgeinfer.optimize.errors import NotApplicable, OptimizeError
from edgeinfer.optimize.passes.base import DATA, PassResult, quiet, require_choice, run_tool
from edgeinfer.optimize.passes.dynamic_int8 import quant_type, quantized_ops
from edgeinfer.optimize.passes.entropy import speed_up
from edgeinfer.optimize.passes.prepare import QDQ_OPSET, default_opset, prepare

__all__ = [
    "METHODS",
    "NAME",
    "Calibration",
    "StaticInt8Config",
    "activation_bytes",
    "calibrate",
    "check_loads",
    "chunk_samples",
    "prepared",
    "quantize",
    "quantize_or_retry",
    "run",
    "runtime_reason",
]

NAME = "static_int8"
_ENTROPY_BINS = 512  # histogram bins for entropy calibration (KL search over 64..256)
METHODS = ("minmax", "entropy", "percentile")

Method = Literal["minmax", "entropy", "percentile"]


@dataclass(frozen=True)
class StaticInt8Config:
    """Settings of static (calibrated) INT8 quantization."""

    calibration: DataSource = field(default=None, metadata=DATA, compare=False, repr=False)
    method: Method = "minmax"  # how activation ranges are chosen from calibration data
    per_channel: bool = True  # per-output-channel weight scales
    reduce_range: bool = False  # 7-bit weights (for x86 CPUs without VNNI)
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    percentile: float = 99.999  # percent, for method="percentile"
    op_types: tuple[str, ...] | None = None  # None: ONNX Runtime's default set
    nodes_to_exclude: tuple[str, ...] = ()  # node names kept in float
    max_samples: int = 256  # calibration samples used at most
    batch_size: int = 8  # samples per calibration batch
    memory_mb: float = 256.0  # MB of activations held at once while calibrating (see calibrate)

    def __post_init__(self) -> None:
        require_choice("calibration method", self.method, METHODS)
        require_choice("activation_type", self.activation_type, ("uint8", "int8"))
        require_choice("weight_type", self.weight_type, ("int8", "uint8"))
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_samples < 1 or self.batch_size < 1 or self.memory_mb <= 0:
            raise InputError("max_samples and batch_size must be >= 1, memory_mb > 0")
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def _op_types(config: StaticInt8Config) -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if config.op_types:
        return list(config.op_types)
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


@dataclass(frozen=True)
class Calibration:
    """How calibration went: samples used, and how many at a time (memory bound)."""

    samples: int
    chunk: int  # samples whose activations fit the memory budget (at most all of them)
    sample_bytes: int  # activation bytes one sample produces in the calibration model
    given: int  # samples in the calibration data
    batch: int = 0  # samples per calibration run, where memory made it smaller (else 0)
    activation_bytes: int = 0  # bytes of every intermediate tensor of one sample

    def note(self) -> str:
        """One line for the candidate table; empty when all went as asked."""
        parts = []
        if self.given > self.samples:
            parts.append(f"calibrated on the first {self.samples} of {self.given} samples")
        if self.chunk < self.samples:
            parts.append(
                f"calibration kept at most {self.chunk} sample(s)' activations at a time to "
                f"bound memory ({self.sample_bytes / 1e6:.0f} MB per sample)"
            )
        if self.batch:
            parts.append(
                f"calibration ran {self.batch} sample(s) at a time to bound memory "
                f"({self.activation_bytes / 1e6:.0f} MB of activations per sample)"
            )
        return "; ".join(parts)


def chunk_samples(sample_bytes: int, config: StaticInt8Config, histogram: bool) -> int:
    """Samples whose activations fit ``config.memory_mb`` (a histogram calibrator copies
    them once more while merging, so it gets half)."""
    budget = int(config.memory_mb * 1_000_000) // (2 if histogram else 1)
    return max(1, budget // max(1, sample_bytes))


def every_output_session(model: Path) -> Any:
    """An ONNX Runtime session (CPU, no graph optimization) of ``model`` with each node
    output made a graph output: one run gives every intermediate tensor."""
    import onnx
    import onnxruntime as ort

    proto = load_onnx(model)
    have = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in have:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def activation_bytes(model: Path, feeds: dict[str, np.ndarray]) -> int:
    """Bytes of every intermediate tensor of one run on ``feeds`` (one sample): the model
    with each node output made a graph output, run once; 0 where it cannot run."""
    try:
        outputs = every_output_session(model).run(None, feeds)
    except Exception:  # over protobuf's 2 GB, or an output ONNX Runtime will not expose
        return 0  # unknown: the configured batch size stands
    rows = max(1, len(next(iter(feeds.values()))))
    return sum(np.asarray(o).nbytes for o in outputs) // rows


def calibrate(model: Path, config: StaticInt8Config, cache: Path) -> Calibration:
    """Compute activation ranges on the calibration data and save them to ``cache``.

    ONNX Runtime's calibrators keep every intermediate output of every sample they are fed
    before reducing them, and each run of a batch holds the whole batch's activations in
    ONNX Runtime's arena (together 3 GB for PP-OCR's 320x320 detector on 16 samples in
    batches of 8). Both are sized to ``config.memory_mb`` from one sample's bytes: the
    batch from every intermediate tensor (:func:`activation_bytes`), the chunk of samples
    fed to one ``collect_data`` call from the calibrator's outputs; each call reduces its
    chunk and merges it with the earlier ones (min/max ranges, or histograms), as ONNX
    Runtime's own ``CalibStridedMinMax`` does.

    ``quantize_static`` builds its entropy calibrator with as many histogram bins as
    quantized bins (128/128), which leaves the KL search a single candidate threshold, the
    full range: entropy calibration would be min-max in disguise. The calibrator is
    therefore built here, with 512 bins, and its threshold search runs vectorized
    (:mod:`.entropy`, same thresholds, ~5x faster).
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if config.calibration is None:
        raise InputError("static INT8 quantization needs calibration data (calibration=...)")
    data = load_dataset(config.calibration, model_specs(model), what="calibration data")
    given = len(data)
    data = data.head(config.max_samples)
    options: dict[str, Any] = {}
    if config.method == "entropy":
        options = {"num_bins": _ENTROPY_BINS, "num_quantized_bins": 128}
    elif config.method == "percentile":
        options = {"percentile": config.percentile}
    with tempfile.TemporaryDirectory(prefix="edgeinfer-calib-") as tmp:

        def _collect() -> tuple[Any, Calibration]:
            calibrator = create_calibrator(
                Path(model),
                _op_types(config),
                augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                calibrate_method=_method(config.method),
                extra_options=options,
            )
            first = data.sample(0)
            outputs = calibrator.infer_session.run(None, first)
            per_sample = sum(np.asarray(o).nbytes for o in outputs) // max(
                1, len(next(iter(first.values())))
            )
            # Running a batch holds its activations in ONNX Runtime's arena (2.5 GB for
            # PP-OCR's 320x320 detector at 8 samples): the batch fits the budget too.
            act = activation_bytes(Path(model), first)
            histogram = config.method != "minmax"
            chunk = min(len(data), chunk_samples(per_sample, config, histogram))
            batch = min(config.batch_size, chunk, chunk_samples(act, config, False))
            step = chunk
            if histogram:
                # A histogram calibrator stacks the outputs of one collect_data call into
                # one array: one batch per call, or a short last batch breaks the stack.
                step = batch
            if data.batch:
                step = max(data.batch, step - step % data.batch)
            for start in range(0, len(data), step):
                calibrator.collect_data(calibration_reader(data.window(start, step), batch))
            if config.method == "entropy":
                speed_up(getattr(calibrator, "collector", None))
            bounded = batch if batch < min(config.batch_size, chunk) else 0
            found = Calibration(len(data), chunk, int(per_sample), given, bounded, int(act))
            return calibrator.compute_data(), found

        ranges, done = run_tool(f"{config.method} calibration", _collect)
        assert isinstance(done, Calibration)
    save_tensors_data(ranges, cache)
    return done


def quantize(model: Path, config: StaticInt8Config, cache: Path, out_path: Path) -> None:
    """Quantize ``model`` to QDQ INT8 with the activation ranges saved in ``cache``."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    out_path.parent.mkdir(parents=True, exist_ok=True)
    run_tool(
        f"static INT8 quantization ({config.method} calibration)",
        quantize_static,
        os.fspath(model),
        os.fspath(out_path),
        None,
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=quant_type(config.activation_type),
        weight_type=quant_type(config.weight_type),
        calibrate_method=_method(config.method),
        op_types_to_quantize=_op_types(config),
        nodes_to_exclude=list(config.nodes_to_exclude),
        calibration_cache_path=os.fspath(cache),
    )
    cap_ir_version(out_path)


def quantize_or_retry(
    model: Path, config: StaticInt8Config, cache: Path, out_path: Path
) -> tuple[StaticInt8Config, str]:
    """:func:`quantize`; if ONNX Runtime's per-channel quantizer fails, once more with
    per-tensor weight scales (its per-channel bias-scale adjustment fails on some models,
    e.g. magika's, with numpy's "truth value of an array ... is ambiguous").

    Returns the config used and, after a retry, why per-channel was left (else "").
    """
    try:
        quantize(model, config, cache, out_path)
        return config, ""
    except OptimizeError as exc:
        if not config.per_channel:
            raise
        why = str(exc).split(" failed: ", 1)[-1]
        config = replace(config, per_channel=False)
        quantize(model, config, cache, out_path)
        return config, f"ONNX Runtime's per-channel quantizer failed: {why[:120]}"


def prepared(
    model: Path, config: StaticInt8Config, workdir: Path
) -> tuple[Path, StaticInt8Config, dict[str, Any]]:
    """``(model, config, info)`` ready for the quantizer (see :mod:`.prepare`).

    The model is rewritten into ``workdir`` only if something had to change. Below opset
    13 (the converter could not raise it) weights get per-tensor scales, which older
    opsets can express. A model without any operator the quantizer handles is
    :class:`NotApplicable`: calibrating it would collect nothing.
    """
    proto, info = prepare(load_onnx(model))
    if default_opset(proto) < QDQ_OPSET and config.per_channel:
        config = replace(config, per_channel=False)
        info["per_channel"] = f"off: per-channel QDQ needs opset {QDQ_OPSET}"
    have = {n.op_type for n in proto.graph.node}
    if not have & set(_op_types(config)):
        ops = ", ".join(sorted(have)[:6]) + (", ..." if len(have) > 6 else "")
        raise NotApplicable(
            f"nothing to quantize: no operator here has an INT8 kernel (the model has {ops})"
        )
    if not info:
        return model, config, info
    path = Path(workdir) / "prepared.onnx"
    save_onnx(proto, path)
    return path, config, info


def check_loads(path: Path, what: str) -> None:
    """Refuse a quantized model that ONNX Runtime cannot load, in one actionable line."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        with quiet():
            ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OptimizeError(
            f"{what} wrote a model ONNX Runtime cannot load ({runtime_reason(exc)}); "
            "keep the node it names in float (nodes_to_exclude) or try per_channel=False"
        ) from exc


def runtime_reason(exc: BaseException) -> str:
    """ONNX Runtime's complaint without its code prefix, file paths and type listings."""
    text = " ".join(str(exc).split())
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed: ?", "", text)
    text = re.sub(r" : \(.*", "", text)  # the node's inputs with their types
    return text.strip()[:200] or type(exc).__name__


def run(model: Path, config: StaticInt8Config, out_path: Path) -> PassResult:
    """Calibrate on ``config.calibration``, quantize to QDQ INT8 and write ``out_path``."""
    model, out_path = Path(model), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-static-", dir=out_path.parent) as tmp:
        source, config, info = prepared(model, config, Path(tmp))
        cache = Path(tmp) / "ranges.json"
        done = calibrate(source, config, cache)
        config, retried = quantize_or_retry(source, config, cache, out_path)
    check_loads(out_path, f"static INT8 quantization ({config.method} calibration)")
    notes = [done.note()] if done.note() else []
    if retried:
        info["per_channel"] = f"off: {retried}"
        notes.append("per-tensor weights: ONNX Runtime's per-channel quantizer failed here")
    info.update(
        note="; ".join(notes),
        calibration_samples=done.samples,
        calibration_chunk=done.chunk,
        method=config.method,
        quantized_ops=quantized_ops(load_onnx(out_path)),
        excluded=list(config.nodes_to_exclude),
    )
    return PassResult(out_path, info)
