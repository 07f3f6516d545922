"""The model's inputs, as cut sizing sees them: declared shapes, the batch axis, the sizes
of the other dynamic dimensions, and inputs to run the model on.

A dynamic input dimension is sized by its symbol (``sequence``), or, when it has none,
by ``INPUT.AXIS`` (``x.2``, as everywhere ``--dim`` is taken; a named axis answers to
``INPUT.AXIS`` too, as ``bench`` takes it: :func:`canonical_dims`): exporters write unnamed
dimensions as a missing size, as ``-1``, as ``"?"`` or ``"unk__N"``, and none of those
says two axes have the same size. Those sizes come from the caller (``dims``, checked
here: every one known, none missing) or from real inputs (:func:`dims_from_inputs`).
:mod:`edgeinfer.split._shapes` sizes the tensors inside the graph from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.tensors import dtype_from_onnx

if TYPE_CHECKING:
    import onnx

__all__ = [
    "InputShape",
    "by_name",
    "canonical_dims",
    "declared_shape",
    "dims_from_inputs",
    "input_shapes",
    "measuring_feeds",
    "sample_feeds",
]

_UNNAMED = re.compile(r"\?|unk__\d+")  # dim_params that mean "unknown", not a shared symbol


@dataclass(frozen=True)
class InputShape:
    name: str
    elem_type: int
    declared: tuple[int | str | None, ...]  # None: dynamic without a name
    batch_axis: bool  # the first axis is dynamic: the batch

    def key(self, axis: int) -> str | None:
        """What sizes this axis in ``dims``: its symbol, ``"<input>.<axis>"`` for an
        unnamed dynamic axis, ``None`` for a fixed one or the batch."""
        d = self.declared[axis]
        if isinstance(d, int) or (axis == 0 and self.batch_axis):
            return None
        return d if isinstance(d, str) else f"{self.name}.{axis}"

    def concrete(self, batch: int, dims: Mapping[str, int]) -> list[int]:
        out = []
        for axis, d in enumerate(self.declared):
            key = self.key(axis)
            if key is not None:
                out.append(dims[key])
            elif isinstance(d, int):
                out.append(d)
            else:
                out.append(batch)
        return out


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value >= 0 else None  # -1: some exporters' "dynamic"
    return d.dim_param if d.dim_param and not _UNNAMED.fullmatch(d.dim_param) else None


def declared_shape(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(_dim(d) for d in tt.shape.dim)


def _shapes_of(model: onnx.ModelProto, where: str) -> list[InputShape]:
    inits = {t.name for t in model.graph.initializer}
    shapes = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        declared = declared_shape(vi)
        if declared is None:
            raise InputError(f"{where}: input {vi.name!r} has no declared rank; cannot size cuts")
        batch = bool(declared) and not isinstance(declared[0], int)
        shapes.append(InputShape(vi.name, vi.type.tensor_type.elem_type, declared, batch))
    return shapes


def _describe(key: str, shapes: Sequence[InputShape]) -> str:
    for s in shapes:
        for axis in range(len(s.declared)):
            if s.key(axis) == key and s.declared[axis] is None:
                return f"{key!r} (input {s.name!r} axis {axis}, unnamed)"
    return repr(key)


def canonical_dims(
    model: onnx.ModelProto, dims: Mapping[str, int] | None, where: str = "model"
) -> dict[str, int]:
    """``dims`` keyed as :meth:`InputShape.key` keys them: ``INPUT.AXIS`` of an axis that
    has a symbol becomes the symbol (``x.2=320`` sizes ``height`` when axis 2 of ``x`` is
    ``height``), so one spelling works for every dynamic axis, named or not. Two
    spellings of one dimension with two sizes, or a size for the batch axis (cuts are
    sized per sample), are errors; unknown names are left to :func:`input_shapes`.

    >>> canonical_dims(det, {"x.2": 320, "x.3": 320})  # doctest: +SKIP
    {'p2o.DynamicDimension.1': 320, 'p2o.DynamicDimension.2': 320}
    """
    shapes = _shapes_of(model, where)
    alias: dict[str, str] = {}
    batch_axes: set[str] = set()
    for s in shapes:
        for axis in range(len(s.declared)):
            key = s.key(axis)
            if key is not None:
                alias[f"{s.name}.{axis}"] = key
            elif axis == 0 and s.batch_axis:
                batch_axes.add(f"{s.name}.0")
    out: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for given, size in (dims or {}).items():
        if given in batch_axes:
            raise InputError(
                f"{where}: dimension {given!r} is the batch axis; cuts are sized per sample "
                "(the batch profiled is that of the inputs), size only the other dimensions"
            )
        key = alias.get(given, given)
        if key in out and out[key] != size:
            raise InputError(
                f"{where}: dimension {key!r} is sized twice, {spelled[key]}={out[key]} and "
                f"{given}={size}; give it one size"
            )
        out[key] = size
        spelled.setdefault(key, given)
    return out


def input_shapes(
    model: onnx.ModelProto, dims: Mapping[str, int], where: str = "model"
) -> list[InputShape]:
    """The model inputs with their batch axis found, checking ``dims`` sizes the rest."""
    shapes = _shapes_of(model, where)
    bad = {k: v for k, v in dims.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise InputError(f"{where}: dimension sizes must be integers >= 1, got {bad}")
    keys = list(dict.fromkeys(k for s in shapes for a in range(len(s.declared)) if (k := s.key(a))))
    unknown = [k for k in dims if k not in keys]
    if unknown:
        axes = {
            k: f"{s.name}.{a}" for s in shapes for a in range(len(s.declared)) if (k := s.key(a))
        }
        known = [k if axes[k] == k else f"{k!r} ({axes[k]})" for k in keys]
        raise InputError(
            f"{where}: unknown dimension(s) {', '.join(map(repr, unknown))}; the dynamic "
            "dimensions besides the batch are "
            f"{', '.join(k if '(' in k else repr(k) for k in known) or '(none)'}"
        )
    missing = [k for k in keys if k not in dims]
    if missing:
        raise InputError(
            f"{where}: dynamic dimension(s) besides the batch need a size to compute the bytes "
            f"crossing each cut: {', '.join(_describe(m, shapes) for m in missing)}; pass real "
            f"inputs (CLI: --inputs FILE) or sizes (CLI: "
            f"{' '.join(f'--dim {m}=N' for m in missing)}; API: dims={{...}})"
        )
    return shapes


def dims_from_inputs(model: onnx.ModelProto, inputs: Any, where: str = "model") -> dict[str, int]:
    """The sizes real ``inputs`` (name -> array, or one array for a one-input model) give
    the dynamic dimensions besides the batch, keyed as ``dims`` is (see
    :meth:`InputShape.key`). Inputs missing or of another rank are left to the model's own
    input check; one symbol with two sizes is an error here."""
    shapes = _shapes_of(model, where)
    inputs = by_name(shapes, inputs)
    found: dict[str, tuple[int, str]] = {}
    for s in shapes:
        value = inputs.get(s.name)
        shape = getattr(value, "shape", None)
        if shape is None and value is not None:
            shape = np.shape(value)
        if shape is None or len(shape) != len(s.declared):
            continue
        for axis, size in enumerate(shape):
            key = s.key(axis)
            if key is None:
                continue
            seen = found.setdefault(key, (int(size), s.name))
            if seen[0] != size:
                raise InputError(
                    f"{where}: dimension {key!r} is {seen[0]} in input {seen[1]!r} but {size} "
                    f"in input {s.name!r}; inputs of one request must agree on it"
                )
    return {k: v[0] for k, v in found.items()}


def by_name(shapes: Sequence[InputShape], inputs: Any) -> Mapping[str, Any]:
    """``inputs`` as name -> value (one bare value is the one input's)."""
    if isinstance(inputs, Mapping):
        return inputs
    return {shapes[0].name: inputs} if len(shapes) == 1 else {}


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


def measuring_feeds(
    shapes: Sequence[InputShape],
    batch: int,
    dims: Mapping[str, int],
    real: Mapping[str, Any] | None,
) -> dict[str, np.ndarray]:
    """:func:`sample_feeds`, with each real input used where it fits these sizes (its
    first sample repeated ``batch`` times): some models run only on real values (a sample
    rate, token ids in a vocabulary)."""
    feeds = sample_feeds(shapes, batch, dims)
    for s in shapes:
        if real is None or s.name not in real:
            continue
        a = np.asarray(real[s.name])
        if s.batch_axis and a.ndim >= 1 and a.shape[0] >= 1:
            a = np.repeat(a[:1], batch, axis=0)
        if list(a.shape) == s.concrete(batch, dims) and a.dtype == feeds[s.name].dtype:
            feeds[s.name] = a
    return feeds
