"""Sizes of the tensors inside a graph, for the bytes that would cross a cut.

ONNX shape inference runs on a copy whose inputs have fixed sizes: batch 1 and batch 2
(other dynamic dimensions from the caller's ``dims``), then batch 1 with each of those
dimensions doubled in turn. The first gives the bytes per sample; comparing it with the
others tells batched tensors from per-request ones (shape tensors) and which axes follow
a dynamic input dimension (those stay dynamic in the halves). Whatever static inference
cannot resolve (shapes computed from data in ways it does not follow) is measured instead,
by one ONNX Runtime run on sample inputs with those tensors added as outputs. The shapes
as the model declares them, symbols kept, come from inference on the unmodified graph.
The inputs, their dynamic dimensions and the feeds are :mod:`edgeinfer.split._inputs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import BackendError
from edgeinfer.split._inputs import (
    by_name,
    canonical_dims,
    declared_shape,
    input_shapes,
    measuring_feeds,
)
from edgeinfer.tensors import dtype_from_numpy, dtype_from_onnx

if TYPE_CHECKING:
    import onnx

__all__ = ["TensorInfo", "tensor_infos"]

_MAX_PROTO = 2_000_000_000  # bytes: protobuf's limit for one serialized model
_SKELETON_ABOVE = 4096  # bytes: initializers larger than this lose their data for inference


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    declared: tuple[int | str | None, ...]  # input symbols kept, derived dims measured
    bytes: int  # at batch 1
    batched: bool  # bytes grow with the batch size


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
            out[vi.name] = (tt.elem_type, declared_shape(vi))
    return out


def _measure(
    model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray] | str]:
    """The named tensors for each set of feeds (where that run failed, why), from one
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
    results: list[dict[str, np.ndarray] | str] = []
    for feed in feeds:
        try:
            values = sess.run(list(names), dict(feed))
        except Exception as exc:
            results.append(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            continue
        results.append(dict(zip(names, values, strict=True)))
    return results


def _nbytes(elem_type: int, shape: Sequence[int]) -> int:
    return math.prod(shape) * dtype_from_onnx(elem_type).itemsize


def _signature(
    declared: tuple[int | str | None, ...] | None,
    concrete: Mapping[int, list[int]],
    doubled: Mapping[int, str],
    dims: Mapping[str, int],
    symbols: set[str],
    batch_name: str,
) -> tuple[int | str | None, ...]:
    """The shape a head output / tail input is declared with.

    ``concrete``: sizes measured at batch 1 (key 1), batch 2 (key 2) and batch 1 with one
    dynamic dim doubled (the other keys; ``doubled`` names which). Kept: the model's own
    symbols where they are the inputs'. Named: the axis that grew with the batch, and an
    axis that is exactly one named dim's size and doubled with it alone. Left dynamic
    (``None``): any other axis that changed with a dim, so the halves take every size the
    model takes (a feature map's width in an image of any width). Otherwise the measured
    size.
    """
    one = concrete[1]
    two = concrete.get(2)
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
        moved = {
            key: concrete[key][axis]
            for key in doubled
            if key in concrete
            and len(concrete[key]) == len(one)
            and concrete[key][axis] != one[axis]
        }
        if not moved:
            shape.append(one[axis])
            continue
        (key, size), *others = moved.items()
        name = doubled[key]
        follows = not others and name in symbols and one[axis] == dims[name]
        shape.append(name if follows and size == 2 * one[axis] else None)
    return tuple(shape)


def tensor_infos(
    model: onnx.ModelProto,
    names: Sequence[str],
    dims: Mapping[str, int],
    where: str = "model",
    inputs: Any = None,
) -> dict[str, TensorInfo]:
    """dtype, declared shape, bytes at batch 1 and batchedness of each named tensor;
    ``inputs``: real inputs to measure on where shape inference falls short."""
    dims = canonical_dims(model, dims, where)
    shapes = input_shapes(model, dims, where)
    real = None if inputs is None else by_name(shapes, inputs)
    batched_model = any(s.batch_axis for s in shapes)
    skeleton = _skeleton(model)
    declared = _infer(skeleton, None)
    used = list(
        dict.fromkeys(
            k for s in shapes for axis in range(len(s.declared)) if (k := s.key(axis)) is not None
        )
    )
    symbols = {k for s in shapes for k in s.declared if isinstance(k, str)}
    # configurations: 1 = batch 1, 2 = batch 2, 3.. = batch 1 with one dim doubled
    configs: dict[int, tuple[int, Mapping[str, int]]] = {1: (1, dims)}
    if batched_model:
        configs[2] = (2, dims)
    doubled: dict[int, str] = {}
    for i, k in enumerate(used, start=3):
        configs[i] = (1, {**dims, k: 2 * dims[k]})
        doubled[i] = k
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
        feeds = [measuring_feeds(shapes, *configs[key], real) for key in keys]
        for key, values in zip(keys, _measure(model, wanted, feeds), strict=True):
            if isinstance(values, str):
                # a doubled size may not fit the model (position tables), nor a batch of
                # two (a state input sized by the batch too): those axes stay fixed
                if key != 1:
                    del found[key]
                    continue
                what = "sample inputs" if real is None else "one sample of the inputs"
                raise BackendError(
                    f"{where}: running the model on {what} failed while measuring the sizes "
                    f"of tensors that shape inference could not resolve ({values})"
                )
            for n, a in values.items():
                found[key][n] = (dtype_from_numpy(a.dtype).onnx, list(a.shape))
    batch_name = next(iter(sorted(batch_symbols)), "batch")
    by_input = {s.name: s for s in shapes}
    out = {}
    for n in names:
        elem = found[1][n][0]
        concrete = {key: found[key][n][1] for key in found}
        size = {key: _nbytes(elem, shape) for key, shape in concrete.items()}
        batched = size[2] != size[1] if 2 in size else True
        if n in by_input:  # a raw input crosses as the model declares it, any size it takes
            s = by_input[n]
            first = s.declared[:1] if s.declared[:1] != (None,) else (batch_name,)
            decl = (*first, *s.declared[1:]) if s.batch_axis else s.declared
        else:
            decl = _signature(
                declared.get(n, (elem, None))[1], concrete, doubled, dims, symbols, batch_name
            )
        out[n] = TensorInfo(dtype_from_onnx(elem).name, decl, size[1], batched)
    return out
