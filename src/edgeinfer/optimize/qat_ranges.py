"""QDQ INT8 with the ranges quantization-aware training learned, and the proof that it has them.

:mod:`.qat_torch` trains a module with torch.ao fake quantization and exports its float
weights to ONNX. This module turns that float ONNX model into the QDQ INT8 model ONNX
Runtime runs, with ONNX Runtime's own static quantizer (the one the PTQ candidates use), but
with the activation ranges QAT learned in place of calibrated ones:

1. :func:`match_ranges`: every ONNX tensor (graph inputs and node outputs, run once on a
   probe batch with all intermediates exposed) is matched *by value* to the fake quantizer
   whose input held the same numbers in torch. Matching by value needs no name mapping
   between torch.fx and the exporter, survives ONNX Runtime's graph optimization (renamed
   or folded nodes), and gives one range to every tensor that carries the same values
   (MaxPool's input and output share a torch observer and get the same range). A Relu
   whose output matched gives its range to its input too, as ONNX Runtime's quantizer
   does when it folds the Relu into the producer's requantization. Outputs the quantizer
   writes with their input's parameters (Flatten, Reshape, MaxPool, ...) get the input's
   learned range, as they will in the file.
2. :func:`quantize_with_ranges`: calibrates min/max on the calibration data (for tensors
   no fake quantizer watched), replaces the matched tensors' ranges by the learned ones,
   and quantizes with that range table (``calibration_cache_path``).
3. :func:`verify`: reads back every QuantizeLinear of the written model whose tensor has a
   learned range and compares its scale and zero point with torch's; weight scales
   (per channel) are compared with torch's weight fake quantizers the same way. A
   mismatch in the activations is an :class:`OptimizeError`: the model would not be the
   one QAT trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert.onnx_io import load_onnx
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.errors import OptimizeError
from edgeinfer.optimize.passes.base import DATA, quiet
from edgeinfer.optimize.passes.static_int8 import (
    StaticInt8Config,
    calibrate,
    check_loads,
    every_output_session,
    quantize_or_retry,
)

__all__ = [
    "Learned",
    "LearnedRangesConfig",
    "Matched",
    "match_ranges",
    "quantize_with_ranges",
    "verify",
]

_MATCH_RTOL = 1e-3  # a tensor matches a recorded one within 0.1% of its largest magnitude
_SCALE_RTOL = 1e-5  # learned and written scales agree to float32 rounding
# ONNX Runtime's QDQ quantizer writes these operators' outputs with their input's scale and
# zero point (QDQDirect8BitOp, QDQMaxPool): a learned range of the output is not used.
_SAME_AS_INPUT = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "AveragePool",
        "MaxPool",
        "Slice",
        "TopK",
    }
)


@dataclass(frozen=True)
class Learned:
    """What one fake quantizer learned: scale, zero point and integer range."""

    scale: np.ndarray  # one value (activations) or one per channel (weights)
    zero_point: np.ndarray
    quant_min: int
    quant_max: int

    @property
    def range(self) -> tuple[float, float]:
        """The real range ``[(qmin - zp) * s, (qmax - zp) * s]`` (per-tensor quantizers)."""
        s, z = float(self.scale.reshape(-1)[0]), int(self.zero_point.reshape(-1)[0])
        return (self.quant_min - z) * s, (self.quant_max - z) * s


@dataclass(frozen=True)
class Matched:
    """Which ONNX tensors (and weight initializers) got which fake quantizer's values."""

    activations: dict[str, str] = field(default_factory=dict)  # tensor -> quantizer name
    weights: dict[str, str] = field(default_factory=dict)  # initializer -> quantizer name


@dataclass(frozen=True)
class LearnedRangesConfig:
    """The recipe step: static INT8 QDQ whose activation ranges come from QAT."""

    quantization: StaticInt8Config  # weight/activation types, per channel: as the PTQ candidates
    learned: dict[str, Learned] = field(default_factory=dict, metadata=DATA, repr=False)
    records: dict[str, list[np.ndarray]] = field(default_factory=dict, metadata=DATA, repr=False)
    weights: dict[str, np.ndarray] = field(default_factory=dict, metadata=DATA, repr=False)
    probe: dict[str, np.ndarray] = field(default_factory=dict, metadata=DATA, repr=False)


def _intermediates(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float tensor of one run on ``feeds``: graph inputs and all node outputs."""
    with quiet():
        session = every_output_session(model)
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    out = {k: np.asarray(v) for k, v in feeds.items()}
    out.update({n: np.asarray(v) for n, v in zip(names, values, strict=True)})
    return {k: v for k, v in out.items() if v.dtype == np.float32 and v.size}


def _same(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two arrays are, relative to the larger magnitude (inf: other shape)."""
    if a.shape != b.shape:
        return float("inf")
    scale = max(float(np.abs(b).max()), 1e-6)
    return float(np.abs(a - b).max()) / scale


def _best(value: np.ndarray, records: dict[str, list[np.ndarray]]) -> str | None:
    best, best_diff = None, _MATCH_RTOL
    for name, seen in records.items():
        for rec in seen:
            diff = _same(value, rec)
            if diff <= best_diff:
                best, best_diff = name, diff
    return best


def match_ranges(model: Path, config: LearnedRangesConfig) -> Matched:
    """Match the ONNX tensors and weights of ``model`` to torch's fake quantizers by value."""
    import onnx.numpy_helper

    tensors = _intermediates(model, config.probe)
    activations: dict[str, str] = {}
    for name, value in tensors.items():
        if np.abs(value).max() == 0.0:
            continue  # all zeros match anything: no evidence
        found = _best(value, config.records)
        if found is not None:
            activations[name] = found
    proto = load_onnx(model)
    for node in proto.graph.node:
        if node.op_type in _SAME_AS_INPUT and node.input[0] in activations:
            # The quantizer gives these outputs their input's scale (no requantization), so
            # torch's own observer of the output (Flatten has one) is not what is written.
            activations[node.output[0]] = activations[node.input[0]]
        elif node.op_type in ("Relu", "Clip") and node.output[0] in activations:
            activations.setdefault(node.input[0], activations[node.output[0]])
    weights: dict[str, str] = {}
    for init in proto.graph.initializer:
        if len(init.dims) < 2:
            continue  # biases and shape constants: not quantized per channel
        array = onnx.numpy_helper.to_array(init).astype(np.float32)
        found = _best(array, {k: [v] for k, v in config.weights.items()})
        if found is not None:
            weights[init.name] = found
    return Matched(activations, weights)


def quantize_with_ranges(
    model: Path, config: LearnedRangesConfig, calibration: Dataset, out_path: Path
) -> tuple[Matched, dict[str, Any]]:
    """Write the QDQ INT8 model of ``model`` with the learned ranges; verify it."""
    from onnxruntime.quantization.calibrate import (
        TensorData,
        load_tensors_data,
        save_tensors_data,
    )

    matched = match_ranges(model, config)
    if not matched.activations:
        raise OptimizeError(
            "none of the exported model's tensors matches a QAT fake quantizer's values; "
            "the learned ranges cannot be placed (is the module's forward deterministic?)"
        )
    qcfg = StaticInt8Config(
        calibration=calibration,
        method="minmax",
        per_channel=config.quantization.per_channel,
        activation_type=config.quantization.activation_type,
        weight_type=config.quantization.weight_type,
        max_samples=config.quantization.max_samples,
        op_types=config.quantization.op_types,
    )
    cache = out_path.with_suffix(".ranges.json")
    calibrate(model, qcfg, cache)
    table = load_tensors_data(cache)
    placed = 0
    for tensor, quantizer in matched.activations.items():
        if tensor in table.data:
            low, high = config.learned[quantizer].range
            table.data[tensor] = TensorData(lowest=np.float32(low), highest=np.float32(high))
            placed += 1
    save_tensors_data(table, cache)
    used, retried = quantize_or_retry(model, qcfg, cache, out_path)
    os.remove(cache)
    check_loads(out_path, "QDQ INT8 with the learned ranges")
    checked = verify(out_path, matched, config.learned)
    info: dict[str, Any] = {
        "learned_ranges": placed,
        "calibrated_ranges": len(table.data) - placed,
        "per_channel": used.per_channel,
        **checked,
    }
    if retried:
        info["note"] = "per-tensor weights: ONNX Runtime's per-channel quantizer failed here"
    return matched, info


def _initializers(proto: Any) -> dict[str, np.ndarray]:
    import onnx.numpy_helper

    return {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}


def verify(path: Path, matched: Matched, learned: dict[str, Learned]) -> dict[str, Any]:
    """Compare the scales and zero points written in ``path`` with the learned ones.

    Returns the counts checked and the largest relative scale differences; raises
    :class:`OptimizeError` when an activation's written scale or zero point is not the
    learned one.
    """
    proto = load_onnx(path)
    consts = _initializers(proto)
    act_checked, act_diff = 0, 0.0
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in matched.activations:
            continue
        want = learned[matched.activations[node.input[0]]]
        scale = float(consts[node.input[1]].reshape(-1)[0])
        zero = int(consts[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 else 0
        want_scale = float(want.scale.reshape(-1)[0])
        diff = abs(scale - want_scale) / want_scale
        if diff > _SCALE_RTOL or zero != int(want.zero_point.reshape(-1)[0]):
            raise OptimizeError(
                f"tensor {node.input[0]!r} was quantized with scale {scale:.6g}, zero point "
                f"{zero}; QAT learned {want_scale:.6g}, {int(want.zero_point.reshape(-1)[0])}"
            )
        act_checked += 1
        act_diff = max(act_diff, diff)
    w_checked, w_diff = 0, 0.0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith("_quantized"):
            continue
        weight = node.input[0].removesuffix("_quantized")
        if weight not in matched.weights:
            continue
        want_w = learned[matched.weights[weight]].scale.reshape(-1).astype(np.float64)
        got = consts[node.input[1]].reshape(-1).astype(np.float64)
        if got.shape != want_w.shape:
            continue  # per-tensor weights (the per-channel quantizer failed): not comparable
        w_checked += 1
        w_diff = max(w_diff, float(np.max(np.abs(got - want_w) / np.maximum(want_w, 1e-12))))
    return {
        "activation_scales_checked": act_checked,
        "activation_scale_max_rel_diff": act_diff,
        "weight_tensors_checked": w_checked,
        "weight_scale_max_rel_diff": w_diff,
    }
