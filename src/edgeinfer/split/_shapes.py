"""Sizes of the tensors inside a graph, for the bytes that would cross a cut.

ONNX shape inference runs twice on a copy whose inputs have fixed sizes: batch 1 and
batch 2 (other dynamic dimensions from the caller's ``dims``). The first gives the bytes
per sample; comparing both tells batched tensors from per-request ones (shape tensors).
Whatever static inference cannot resolve (shapes computed from data in ways it does not
follow) is measured instead, by one ONNX Runtime run on sample inputs with those tensors
added as outputs. The shapes as the model declares them, symbols kept, come from
inference on the unmodified graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import BackendError, InputError
from edgeinfer.tensors import dtype_from_numpy, dtype_from_onnx

if TYPE_CHECKING:
    import onnx

__all__ = ["InputShape", "TensorInfo", "input_shapes", "sample_feeds", "tensor_infos"]

_MAX_PROTO = 2_000_000_000  # bytes: protobuf's limit for one serialized model
_SKELETON_ABOVE = 4096  # bytes: initializers larger than this lose their data for inference


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    declared: tuple[int | str | None, ...]  # input symbols kept, derived dims measured
    bytes: int  # at batch 1
    batched: bool  # bytes grow with the batch size


@dataclass(frozen=True)
class InputShape:
    name: str
    elem_type: int
    declared: tuple[int | str | None, ...]
    batch_axis: bool  # the first axis is dynamic: the batch

    def concrete(self, batch: int, dims: Mapping[str, int]) -> list[int]:
        out = []
        for axis, d in enumerate(self.declared):
            if axis == 0 and self.batch_axis:
                out.append(batch)
            elif isinstance(d, int):
                out.append(d)
            else:
                out.append(dims[str(d)])
        return out


def _declared(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
    )


def input_shapes(
    model: onnx.ModelProto, dims: Mapping[str, int], where: str = "model"
) -> list[InputShape]:
    """The model inputs with their batch axis found, checking ``dims`` sizes the rest."""
    inits = {t.name for t in model.graph.initializer}
    shapes, missing = [], []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        declared = _declared(vi)
        if declared is None:
            raise InputError(f"{where}: input {vi.name!r} has no declared rank; cannot size cuts")
        batch = bool(declared) and not isinstance(declared[0], int)
        for axis, d in enumerate(declared):
            if axis == 0 and batch:
                continue
            if d is None:
                raise InputError(
                    f"{where}: input {vi.name!r} axis {axis} is dynamic without a name; "
                    "give the model fixed or named dimensions to size its cuts"
                )
            if isinstance(d, str) and d not in dims:
                missing.append(d)
        shapes.append(InputShape(vi.name, vi.type.tensor_type.elem_type, declared, batch))
    bad = {k: v for k, v in dims.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise InputError(f"{where}: dimension sizes must be integers >= 1, got {bad}")
    if missing:
        wanted = ", ".join(f"{m}=N" for m in dict.fromkeys(missing))
        raise InputError(
            f"{where}: dynamic dimension(s) {', '.join(map(repr, dict.fromkeys(missing)))} "
            f"besides the batch need a size to compute the bytes crossing each cut; pass "
            f"dims={{...}} (CLI: --dim {wanted})"
        )
    return shapes


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the data of large initializers (their names, types and dims stay):
    shape inference reads values only of small (shape-like) constants, and copying and
    serializing the weights again and again would dominate the time."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.ByteSize() > _SKELETON_ABOVE:
            name, dtype, dims = init.name, init.data_type, list(init.dims)
            init.Clear()
            init.name, init.data_type = name, dtype
            init.dims.extend(dims)
    return copy


def _infer(model: onnx.ModelProto, fixed: Mapping[str, list[int]] | None) -> dict[str, Any]:
    """name -> (elem_type, shape tuple with ints/symbols/None, or None) from onnx inference."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    if fixed is not None:
        del m.graph.value_info[:]
        for vi in m.graph.input:
            if vi.name in fixed:
                dims = vi.type.tensor_type.shape.dim
                for d, size in zip(dims, fixed[vi.name], strict=True):
                    d.Clear()
                    d.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # inference gives up on some graphs; measuring covers them
        inferred = m
    out: dict[str, Any] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.elem_type:
            out[vi.name] = (tt.elem_type, _declared(vi))
    return out


def sample_feeds(
    shapes: Sequence[InputShape], batch: int, dims: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Plausible inputs: floats in [0, 1), masks of ones, other integers 0 (an id every
    embedding table has)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for s in shapes:
        shape = s.concrete(batch, dims)
        dt = dtype_from_onnx(s.elem_type).numpy
        if "mask" in s.name.lower():
            feeds[s.name] = np.ones(shape, dtype=dt)
        elif dt.kind == "f":
            feeds[s.name] = rng.random(shape).astype(dt)
        elif dt.kind == "b":
            feeds[s.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            feeds[s.name] = np.zeros(shape, dtype=dt)
    return feeds


def _measure(
    model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray] | None]:
    """The named tensors for each set of feeds (``None`` where that run failed), from one
    ONNX Runtime session with those tensors added as outputs."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    if m.ByteSize() > _MAX_PROTO:
        raise BackendError("model too large to measure tensor sizes in memory (> 2 GB)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BackendError(f"measuring the sizes of cut tensors failed: {exc}") from exc
    results: list[dict[str, np.ndarray] | None] = []
    for feed in feeds:
        try:
            values = sess.run(list(names), dict(feed))
        except Exception:
            results.append(None)
            continue
        results.append(dict(zip(names, values, strict=True)))
    return results


def _nbytes(elem_type: int, shape: Sequence[int]) -> int:
    return math.prod(shape) * dtype_from_onnx(elem_type).itemsize


def _signature(
    declared: tuple[int | str | None, ...] | None,
    concrete: Mapping[int, list[int]],
    dims: Mapping[str, int],
    symbols: set[str],
    batch_name: str,
) -> tuple[int | str | None, ...]:
    """The shape a head output / tail input is declared with.

    ``concrete``: sizes measured at batch 1 (key 1), batch 2 (key 2) and, when there are
    dynamic dims besides the batch, batch 1 with those doubled (key 3). Kept: the model's
    own symbols where they are the inputs'. Named: the axis that grew with the batch, and
    an axis that is exactly one dynamic dim's size and doubled with it. Otherwise the
    measured size: a runtime filling unknown dims with 1 would feed mismatched sizes to a
    multi-input tail, and the profile holds for these sizes anyway.
    """
    one = concrete[1]
    two, three = concrete.get(2), concrete.get(3)
    if declared is None or len(declared) != len(one):
        declared = (None,) * len(one)
    shape: list[int | str | None] = []
    for axis, d in enumerate(declared):
        if isinstance(d, int) or (isinstance(d, str) and d in symbols):
            shape.append(d)
            continue
        if two is not None and len(two) == len(one) and one[axis] != two[axis]:
            shape.append(batch_name)
            continue
        named = None
        if three is not None and len(three) == len(one) and three[axis] == 2 * one[axis]:
            matches = [k for k, v in dims.items() if v == one[axis]]
            named = matches[0] if len(matches) == 1 else None
        shape.append(named if named is not None else one[axis])
    return tuple(shape)


def tensor_infos(
    model: onnx.ModelProto, names: Sequence[str], dims: Mapping[str, int], where: str = "model"
) -> dict[str, TensorInfo]:
    """dtype, declared shape, bytes at batch 1 and batchedness of each named tensor."""
    shapes = input_shapes(model, dims, where)
    batched_model = any(s.batch_axis for s in shapes)
    skeleton = _skeleton(model)
    declared = _infer(skeleton, None)
    # configurations: 1 = batch 1, 2 = batch 2, 3 = batch 1 with the other dims doubled
    configs: dict[int, tuple[int, Mapping[str, int]]] = {1: (1, dims)}
    if batched_model:
        configs[2] = (2, dims)
    if dims:
        configs[3] = (1, {k: 2 * v for k, v in dims.items()})
    runs = {
        key: _infer(skeleton, {s.name: s.concrete(b, d) for s in shapes})
        for key, (b, d) in configs.items()
    }
    batch_symbols = {str(s.declared[0]) for s in shapes if s.batch_axis and s.declared[0]}

    def static(name: str, key: int) -> tuple[int, list[int]] | None:
        got = runs[key].get(name)
        if got is not None and got[1] is not None and all(isinstance(d, int) for d in got[1]):
            return got[0], list(got[1])
        # Exporters declare shapes with the inputs' symbols (["batch", "sequence", 384]),
        # which inference on fixed sizes sometimes loses through Shape -> Reshape chains.
        decl = declared.get(name)
        if decl is None or decl[1] is None:
            return None
        b, d_sizes = configs[key]
        sizes = []
        for d in decl[1]:
            if isinstance(d, int):
                sizes.append(d)
            elif d in batch_symbols:
                sizes.append(b)
            elif d in d_sizes:
                sizes.append(d_sizes[d])
            else:
                return None
        return decl[0], sizes

    found: dict[int, dict[str, tuple[int, list[int]]]] = {key: {} for key in configs}
    missing: set[str] = set()
    for key in configs:
        for n in names:
            got = static(n, key)
            if got is None:
                missing.add(n)
            else:
                found[key][n] = got
    if missing:
        wanted = sorted(missing)
        keys = list(configs)
        feeds = [sample_feeds(shapes, *configs[key]) for key in keys]
        for key, values in zip(keys, _measure(model, wanted, feeds), strict=True):
            if values is None:
                if key == 3:  # doubled sizes may not fit the model (position tables): skip
                    del found[3]
                    continue
                raise BackendError(
                    f"{where}: running the model on sample inputs failed while measuring "
                    "the sizes of tensors that shape inference could not resolve"
                )
            for n, a in values.items():
                found[key][n] = (dtype_from_numpy(a.dtype).onnx, list(a.shape))
    batch_name = next(iter(sorted(batch_symbols)), "batch")
    out = {}
    for n in names:
        elem = found[1][n][0]
        concrete = {key: found[key][n][1] for key in found}
        size = {key: _nbytes(elem, shape) for key, shape in concrete.items()}
        batched = size[2] != size[1] if 2 in size else True
        decl = _signature(
            declared.get(n, (elem, None))[1], concrete, dims, batch_symbols | set(dims),
            batch_name,
        )  # fmt: skip
        out[n] = TensorInfo(dtype_from_onnx(elem).name, decl, size[1], batched)
    return out
