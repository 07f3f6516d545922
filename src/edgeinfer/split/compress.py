"""Compression of the tensors crossing a cut, built into the head and tail graphs.

``uint8``: each float tensor is quantized per sample with an affine map over its whole
extent (``q = round((x - lo) / scale)``, ``scale = (hi - lo) / 255``, where ``lo``/``hi``
are that sample's min and max). The head sends ``<name>__u8`` (uint8, the tensor's shape),
``<name>__scale`` and ``<name>__offset`` (float32 ``[N, 1]``); the tail restores
``x = q * scale + offset`` before its first node. Four times fewer bytes than float32,
and the error per element is at most ``scale / 2``.

``fp16``: the head sends ``<name>__fp16`` (float16); the tail casts it back. Half the
bytes, about three significant digits kept.

Non-float tensors (masks, ids, shapes) cross unchanged. Because the ranges are computed
per sample at run time, nothing needs calibrating. :func:`measure_fidelity` runs the full
model and the compressed halves on the same real inputs and reports what was lost.

Output compression (:func:`compress_outputs`) does the same for the download: the model the
server runs (a tail, or the whole model for remote-only) ends by quantizing its float outputs,
and the device restores them (:func:`restore_outputs`). A detector's raw output mixes box
coordinates (hundreds of pixels) with class scores (0 to 1) in one tensor, so a uint8 output
keeps one range per channel (axis 1: per box coordinate, per class) for tensors of rank 3 or
more: ``<name>__scale`` and ``<name>__offset`` are ``[N, C, 1]``. Rank-2 outputs keep one
range per sample, as cut tensors do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import InputError

if TYPE_CHECKING:
    import onnx

    from edgeinfer.split.graph import Cut, CutTensor

__all__ = [
    "MODES",
    "Fidelity",
    "check_mode",
    "compress_outputs",
    "compress_split",
    "compressed_bytes",
    "dequantize_uint8",
    "measure_fidelity",
    "quantize_uint8",
    "restore_outputs",
    "wire_names",
]

MODES = ("uint8", "fp16")
_EPS = 1e-12  # smallest scale: a constant tensor still round-trips exactly


def check_mode(mode: str, what: str = "cut compression") -> str:
    """``mode`` if it is a compression this module knows, else :class:`InputError`."""
    if mode not in MODES:
        raise InputError(f"unknown {what} {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def _compressible(t: CutTensor) -> bool:
    return t.dtype == "float32" and t.shape is not None and len(t.shape) >= 1


def wire_names(t: CutTensor, mode: str | None) -> list[str]:
    """The names ``t`` travels under with this compression."""
    if mode is None or not _compressible(t):
        return [t.name]
    if check_mode(mode) == "fp16":
        return [f"{t.name}__fp16"]
    return [f"{t.name}__u8", f"{t.name}__scale", f"{t.name}__offset"]


def compressed_bytes(cut: Cut, mode: str | None) -> int:
    """Bytes per sample crossing ``cut`` after compression (extreme cuts: uncompressed)."""
    if cut.is_remote_only or cut.is_local_only:
        mode = None
    total = 0
    for t in cut.crossing:
        if mode is None or not _compressible(t):
            total += t.bytes_per_sample
        elif check_mode(mode) == "fp16":
            total += t.bytes_per_sample // 2
        else:
            total += t.bytes_per_sample // 4 + 8  # codes + scale + offset
    return total


# ------------------------------------------------------------------ numpy reference
def quantize_uint8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample affine uint8 codes, scale and offset (``[N, 1]``) of a float array."""
    flat = x.reshape(x.shape[0], -1).astype(np.float32)
    lo = flat.min(axis=1, keepdims=True)
    hi = flat.max(axis=1, keepdims=True)
    scale = np.maximum((hi - lo) / np.float32(255), np.float32(_EPS))
    q = np.clip(np.rint((flat - lo) / scale), 0, 255).astype(np.uint8)
    return q.reshape(x.shape), scale.astype(np.float32), lo.astype(np.float32)


def dequantize_uint8(q: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Undo :func:`quantize_uint8`; with ``[N, C, 1]`` scale and offset, the per-channel
    codes of an output (:func:`compress_outputs`)."""
    lead = q.shape[: scale.ndim - 1]  # (N,) per sample, (N, C) per channel
    flat = q.reshape(*lead, -1).astype(np.float32)
    restored: np.ndarray = (flat * scale + offset).reshape(q.shape).astype(np.float32)
    return restored


def _is_range_of_codes(name: str, outputs: Mapping[str, np.ndarray]) -> bool:
    """Whether ``name`` is the scale or offset of a ``__u8`` output in ``outputs``."""
    base, _, suffix = name.rpartition("__")
    return suffix in ("scale", "offset") and f"{base}__u8" in outputs


def restore_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float outputs behind a compressed model's outputs (:func:`compress_outputs`):
    ``x__u8`` with ``x__scale`` and ``x__offset`` become ``x``, ``x__fp16`` becomes ``x``
    (float32); anything else passes through."""
    restored: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        if name.endswith("__u8"):
            base = name[: -len("__u8")]
            try:
                scale, offset = outputs[f"{base}__scale"], outputs[f"{base}__offset"]
            except KeyError:
                raise InputError(
                    f"output {name!r} came without {base}__scale and {base}__offset; ask the "
                    "server for all three"
                ) from None
            restored[base] = dequantize_uint8(value, scale, offset)
        elif name.endswith("__fp16"):
            restored[name[: -len("__fp16")]] = value.astype(np.float32)
        elif not _is_range_of_codes(name, outputs):
            restored[name] = value
    return restored


# ------------------------------------------------------------------ graph surgery
def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class _Builder:
    def __init__(self, prefix: str, opset: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.prefix = prefix
        self.opset = opset
        self.count = 0

    def tmp(self) -> str:
        self.count += 1
        return f"{self.prefix}/{self.count}"

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.tmp()
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = out or self.tmp()
        self.count += 1
        name = f"{self.prefix}/{op_type}_{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def reduce(self, op_type: str, x: str, axis: int = 1) -> str:
        if self.opset >= 18:
            return self.op(op_type, [x, self.const(np.array([axis], np.int64))], keepdims=1)
        return self.op(op_type, [x], axes=[axis], keepdims=1)


def _quantize(b: _Builder, t: str, out: Sequence[str], per_channel: bool = False) -> None:
    """``t`` as uint8 codes, with scale and offset per sample (``[N, 1]``) or, with
    ``per_channel``, per sample and channel (``[N, C, 1]``)."""
    shape = [0, 0, -1] if per_channel else [0, -1]
    flat = b.op("Reshape", [t, b.const(np.array(shape, np.int64))])
    axis = len(shape) - 1
    lo = b.reduce("ReduceMin", flat, axis)
    hi = b.reduce("ReduceMax", flat, axis)
    span = b.op("Div", [b.op("Sub", [hi, lo]), b.const(np.array(255, np.float32))])
    scale = b.op("Max", [span, b.const(np.array(_EPS, np.float32))], out=out[1])
    b.op("Identity", [lo], out=out[2])
    codes = b.op("Round", [b.op("Div", [b.op("Sub", [flat, lo]), scale])])
    clipped = b.op(
        "Clip", [codes, b.const(np.array(0, np.float32)), b.const(np.array(255, np.float32))]
    )
    u8 = b.op("Cast", [clipped], to=2)  # TensorProto.UINT8
    b.op("Reshape", [u8, b.op("Shape", [t])], out=out[0])


def _dequantize(b: _Builder, names: Sequence[str], t: str) -> None:
    q, scale, offset = names
    flat = b.op("Reshape", [b.op("Cast", [q], to=1), b.const(np.array([0, -1], np.int64))])
    x = b.op("Add", [b.op("Mul", [flat, scale]), offset])
    b.op("Reshape", [x, b.op("Shape", [q])], out=t)


def compress_split(
    head: onnx.ModelProto, tail: onnx.ModelProto, cut: Cut, mode: str
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Add compression at the end of ``head`` and decompression at the start of ``tail``.

    The extreme cuts stay as they are: remote-only sends the raw inputs (a whole-model
    placement) and local-only sends nothing.
    """
    from onnx import helper

    check_mode(mode)
    if cut.is_remote_only or cut.is_local_only:
        return head, tail
    opset = _opset(head)
    if opset < 13:
        raise InputError(f"cut compression needs ONNX opset >= 13; the model uses {opset}")
    hb, tb = _Builder("edgeinfer.split/compress", opset), _Builder("edgeinfer.split/restore", opset)
    head_out: list[onnx.ValueInfoProto] = []
    tail_in: list[onnx.ValueInfoProto] = []
    for t in cut.crossing:
        names = wire_names(t, mode)
        if names == [t.name]:
            head_out.append(next(o for o in head.graph.output if o.name == t.name))
            tail_in.append(next(i for i in tail.graph.input if i.name == t.name))
            continue
        shape = list(t.shape or ())
        batch = shape[0] if shape else None
        if mode == "fp16":
            hb.op("Cast", [t.name], out=names[0], to=10)  # TensorProto.FLOAT16
            tb.op("Cast", [names[0]], out=t.name, to=1)  # TensorProto.FLOAT
            infos = [helper.make_tensor_value_info(names[0], 10, shape)]
        else:
            _quantize(hb, t.name, names)
            _dequantize(tb, names, t.name)
            infos = [
                helper.make_tensor_value_info(names[0], 2, shape),
                helper.make_tensor_value_info(names[1], 1, [batch, 1]),
                helper.make_tensor_value_info(names[2], 1, [batch, 1]),
            ]
        head_out.extend(infos)
        tail_in.extend(infos)
    new_head, new_tail = onnx_copy(head), onnx_copy(tail)
    new_head.graph.node.extend(hb.nodes)
    new_head.graph.initializer.extend(hb.inits)
    del new_head.graph.output[:]
    new_head.graph.output.extend(head_out)
    old_nodes = list(new_tail.graph.node)
    del new_tail.graph.node[:]
    new_tail.graph.node.extend([*tb.nodes, *old_nodes])
    new_tail.graph.initializer.extend(tb.inits)
    del new_tail.graph.input[:]
    new_tail.graph.input.extend(tail_in)
    return new_head, new_tail


def compress_outputs(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    """``model`` with its float outputs (rank >= 2) quantized for the download.

    ``uint8``: ``<name>__u8`` codes with ``<name>__scale``/``<name>__offset``, per channel
    for rank >= 3 (see the module's notes); ``fp16``: ``<name>__fp16``. Other outputs are
    left as they are. :func:`restore_outputs` undoes it on the device.
    """
    from onnx import helper

    check_mode(mode, "output compression")
    opset = _opset(model)
    if opset < 13:
        raise InputError(f"output compression needs ONNX opset >= 13; the model uses {opset}")
    b = _Builder("edgeinfer.split/compress_out", opset)
    outputs: list[onnx.ValueInfoProto] = []
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        rank = len(tt.shape.dim) if tt.HasField("shape") else 0
        if tt.elem_type != 1 or rank < 2:  # TensorProto.FLOAT
            outputs.append(vi)
            continue
        shape: list[Any] = [d.dim_param or (d.dim_value or None) for d in tt.shape.dim]
        if mode == "fp16":
            name = b.op("Cast", [vi.name], out=f"{vi.name}__fp16", to=10)
            outputs.append(helper.make_tensor_value_info(name, 10, shape))
            continue
        names = [f"{vi.name}__u8", f"{vi.name}__scale", f"{vi.name}__offset"]
        per_channel = rank >= 3
        _quantize(b, vi.name, names, per_channel=per_channel)
        ranges = [*shape[:2], 1] if per_channel else [shape[0], 1]
        outputs.append(helper.make_tensor_value_info(names[0], 2, shape))
        outputs.extend(helper.make_tensor_value_info(n, 1, ranges) for n in names[1:])
    new = onnx_copy(model)
    new.graph.node.extend(b.nodes)
    new.graph.initializer.extend(b.inits)
    del new.graph.output[:]
    new.graph.output.extend(outputs)
    return new


def onnx_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


# ------------------------------------------------------------------ fidelity
@dataclass(frozen=True)
class Fidelity:
    """What compressing a cut cost, against the full model on the same inputs."""

    mode: str | None
    max_abs_error: float  # largest |split - full| over all float outputs
    mean_abs_error: float
    relative_error: float  # ||split - full|| / ||full|| (L2, over all float outputs)
    top1_agreement: float | None  # share of rows whose argmax agrees (2-D outputs), else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "relative_error": self.relative_error,
            "top1_agreement": self.top1_agreement,
        }


def compare_outputs(
    full: Mapping[str, np.ndarray], split: Mapping[str, np.ndarray], mode: str | None = None
) -> Fidelity:
    """Errors of ``split`` outputs against ``full`` ones (same names)."""
    diffs, refs, agree = [], [], []
    for name, want in full.items():
        got = split[name]
        if want.dtype.kind != "f":
            continue
        w, g = want.astype(np.float64), got.astype(np.float64)
        diffs.append(np.abs(g - w).ravel())
        refs.append(w.ravel())
        if w.ndim == 2 and w.shape[1] > 1:
            agree.append(np.argmax(w, axis=1) == np.argmax(g, axis=1))
    if not diffs:
        return Fidelity(mode, 0.0, 0.0, 0.0, None)
    d, r = np.concatenate(diffs), np.concatenate(refs)
    rel = float(np.linalg.norm(d) / max(float(np.linalg.norm(r)), 1e-30))
    top1 = float(np.concatenate(agree).mean()) if agree else None
    return Fidelity(mode, float(d.max(initial=0.0)), float(d.mean()), rel, top1)


def measure_fidelity(
    model_path: str,
    head_path: str,
    tail_path: str,
    inputs: Mapping[str, np.ndarray],
    mode: str | None = None,
) -> Fidelity:
    """Run the full model and head -> tail on ``inputs``; how far the outputs moved."""
    from edgeinfer.runtime import load

    with load(model_path, providers=["cpu"]) as full, load(head_path, providers=["cpu"]) as head:
        want = full.predict(dict(inputs))
        sent = head.predict({s.name: inputs[s.name] for s in head.inputs})
    with load(tail_path, providers=["cpu"]) as tail:
        got = restore_outputs(tail.predict(sent))
    return compare_outputs(want, got, mode)
