"""Tensor signatures, dtype mapping and the input validation every entry point uses.

A model's signature is a list of :class:`TensorSpec`. Dtypes are spelled the numpy way
(``"float32"``, ``"int64"``, ``"bytes"`` for strings) and map one to one onto ONNX
``TensorProto`` types and Open Inference Protocol datatypes (``FP32``, ``INT64``, ``BYTES``).
A dimension is an ``int`` (fixed), a ``str`` (symbolic, e.g. ``"batch"``: the same symbol
must have the same size in every input of one call) or ``None`` (dynamic, unnamed).

Exporters spell "unknown" in several ways: ``?`` (Paddle's exporter and others, for every
unknown dim), the empty string, ``-1``, and ``unk__N`` (ONNX shape inference). These are
anonymous: :class:`TensorSpec` reads each of them as ``None``, so two ``?`` dims are two
independent sizes and a classifier declared ``[N,3,?,?]`` takes a 48x192 image. Every other
name is a shared symbol, generated ones such as ``p2o.DynamicDimension.1`` included. ONNX
Runtime itself enforces no name; the ONNX spec says one name is one size, shape inference
relies on it, and holding callers to it turns a wrong pairing (ids and mask of different
lengths) into a clear error instead of a runtime failure deep in the graph.

:class:`InputValidator` turns what a caller passes (dicts of arrays, one bare array, nested
Python lists) into the exact arrays a backend needs, or raises :class:`InputError` with a
message that names the input, what was expected and what was given. Conversions are made
only where they are lossless or conventional: float64 -> float32, integers -> floats,
int64 -> int32 when every value fits. Floats never silently become integers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.errors import InputError

__all__ = [
    "DTYPES",
    "DType",
    "Dim",
    "InputValidator",
    "TensorSpec",
    "dtype_from_numpy",
    "dtype_from_oip",
    "dtype_from_onnx",
    "format_shape",
    "is_anonymous",
]

Dim = int | str | None


@dataclass(frozen=True)
class DType:
    """One element type as numpy, ONNX (``TensorProto``) and the Open Inference Protocol name it."""

    name: str  # numpy-style name, the one edgeinfer uses everywhere
    numpy: np.dtype[Any]
    onnx: int  # onnx.TensorProto.DataType value
    oip: str  # Open Inference Protocol datatype
    ort: str  # ONNX Runtime's type string, e.g. "tensor(float)"

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire (BYTES elements have no fixed size: 0)."""
        return 0 if self.name == "bytes" else self.numpy.itemsize


def _t(name: str, np_name: str, onnx: int, oip: str, ort: str) -> DType:
    return DType(name, np.dtype(np_name), onnx, oip, f"tensor({ort})")


# onnx.TensorProto values are spelled out so that this module does not import onnx.
DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        _t("bool", "bool", 9, "BOOL", "bool"),
        _t("uint8", "uint8", 2, "UINT8", "uint8"),
        _t("uint16", "uint16", 4, "UINT16", "uint16"),
        _t("uint32", "uint32", 12, "UINT32", "uint32"),
        _t("uint64", "uint64", 13, "UINT64", "uint64"),
        _t("int8", "int8", 3, "INT8", "int8"),
        _t("int16", "int16", 5, "INT16", "int16"),
        _t("int32", "int32", 6, "INT32", "int32"),
        _t("int64", "int64", 7, "INT64", "int64"),
        _t("float16", "float16", 10, "FP16", "float16"),
        _t("float32", "float32", 1, "FP32", "float"),
        _t("float64", "float64", 11, "FP64", "double"),
        _t("bytes", "object", 8, "BYTES", "string"),
    )
}
_BY_ONNX = {d.onnx: d for d in DTYPES.values()}
_BY_OIP = {d.oip: d for d in DTYPES.values()}
_BY_ORT = {d.ort: d for d in DTYPES.values()}


def _unknown(kind: str, value: object, known: Sequence[object]) -> InputError:
    return InputError(f"unknown {kind} {value!r}; expected one of {', '.join(map(str, known))}")


_FROM_NUMPY: dict[np.dtype[Any], DType] = {}  # numeric dtypes seen: dt.name is slow


def dtype_from_numpy(dtype: Any) -> DType:
    """The :class:`DType` of a numpy dtype (strings and objects map to ``bytes``)."""
    dt = np.dtype(dtype)
    known = _FROM_NUMPY.get(dt)
    if known is not None:
        return known
    if dt.kind in "OSU":
        return DTYPES["bytes"]
    try:
        known = _FROM_NUMPY[dt] = DTYPES[dt.name]
    except KeyError:
        raise _unknown("numpy dtype", dt.name, list(DTYPES)) from None
    return known


def dtype_from_onnx(elem_type: int | str) -> DType:
    """The :class:`DType` of an ONNX ``TensorProto`` type or an ONNX Runtime type string."""
    table: Mapping[Any, DType] = _BY_ORT if isinstance(elem_type, str) else _BY_ONNX
    try:
        return table[elem_type]
    except KeyError:
        raise _unknown("ONNX element type", elem_type, list(table)) from None


def dtype_from_oip(datatype: str) -> DType:
    """The :class:`DType` of an Open Inference Protocol datatype such as ``"FP32"``."""
    try:
        return _BY_OIP[datatype.upper()]
    except (KeyError, AttributeError):
        raise _unknown("datatype", datatype, list(_BY_OIP)) from None


def format_shape(shape: Sequence[Dim] | None) -> str:
    """``[N,1,28,28]``-style text; ``?`` for unnamed dynamic dims."""
    if shape is None:
        return "[any shape]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


_UNKNOWN_DIM = re.compile(r"^(\?|-1|unk__\d+)?$")


def is_anonymous(dim: object) -> bool:
    """Whether a declared dimension means "any size, unrelated to the others".

    ``None``, ``-1``, and the strings ``"?"``, ``""``, ``"-1"`` and ``"unk__N"`` are; a fixed
    size or any other name (a shared symbol) is not.

    >>> [is_anonymous(d) for d in (None, "?", "", "unk__3", "batch", 3)]
    [True, True, True, True, False, False]
    """
    if dim is None:
        return True
    if isinstance(dim, str):
        return _UNKNOWN_DIM.match(dim.strip()) is not None
    return isinstance(dim, int) and not isinstance(dim, bool) and dim == -1


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    >>> TensorSpec("pixels", "float32", ("N", 1, 8, 8)).describe()
    'float32 [N,1,8,8]'
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None = None  # None: rank unknown; anonymous dims become None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise _unknown("dtype", self.dtype, list(DTYPES))
        if self.shape is not None:
            shape = tuple(None if is_anonymous(d) else d for d in self.shape)
            object.__setattr__(self, "shape", shape)
            for d in self.shape:
                if not (d is None or isinstance(d, str) or (isinstance(d, int) and d >= 0)):
                    raise InputError(
                        f"tensor {self.name!r}: dimension {d!r} is not a size >= 0, "
                        "a symbol or None"
                    )

    @property
    def dt(self) -> DType:
        return DTYPES[self.dtype]

    @property
    def is_dynamic(self) -> bool:
        return self.shape is None or any(not isinstance(d, int) for d in self.shape)

    def describe(self) -> str:
        return f"{self.dtype} {format_shape(self.shape)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        try:
            shape = data.get("shape")
            return cls(
                str(data["name"]), str(data["dtype"]), None if shape is None else tuple(shape)
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"bad tensor spec {dict(data)!r}: {exc}") from None

    def oip_shape(self) -> list[int]:
        """The shape as the Open Inference Protocol writes it: -1 for dynamic dims."""
        return [d if isinstance(d, int) else -1 for d in (self.shape or ())]


# Conversions: what a caller may pass for a given expected kind.
# f: float, i: signed int, u: unsigned int, b: bool.
_FLOAT_FROM = frozenset("fiu")  # integers -> float is conventional (labels, pixel counts)
_INT_FROM = frozenset("iu")  # only when every value fits (checked)


def _describe_value(value: np.ndarray) -> str:
    kind = "str" if value.dtype.kind in "SU" else value.dtype.name
    return f"{kind} {format_shape(value.shape)}"


class InputValidator:
    """Checks and converts a call's inputs against a model signature.

    Built once per model; calling it costs a few microseconds for arrays that already match.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = tuple(specs)
        self.names = tuple(s.name for s in self.specs)
        self._by_name = {s.name: s for s in self.specs}
        self._np = {s.name: s.dt.numpy for s in self.specs}
        # Per input: expected rank (or -1) and the fixed dims as (axis, size) pairs.
        self._rank = {s.name: -1 if s.shape is None else len(s.shape) for s in self.specs}
        self._fixed = {
            s.name: tuple((i, d) for i, d in enumerate(s.shape or ()) if isinstance(d, int))
            for s in self.specs
        }
        self._symbols = {
            s.name: tuple((i, d) for i, d in enumerate(s.shape or ()) if isinstance(d, str))
            for s in self.specs
        }
        self._has_symbols = any(self._symbols.values())
        # The hot path: one tuple per input, so an already-matching call does no dict work.
        self._plan = tuple(
            (s.name, s.dt.numpy, self._rank[s.name], self._fixed[s.name]) for s in self.specs
        )
        self._n = len(self.specs)

    def __call__(self, inputs: Any) -> dict[str, np.ndarray]:
        if type(inputs) is not dict:
            if isinstance(inputs, Mapping):
                inputs = dict(inputs)
            elif self._n != 1:
                raise InputError(
                    f"this model has {self._n} inputs ({', '.join(self.names)}); "
                    "pass a dict name -> array"
                )
            else:
                inputs = {self.names[0]: inputs}
        if len(inputs) != self._n:
            self._raise_names(inputs)
        out: dict[str, np.ndarray] = {}
        for name, want, rank, fixed in self._plan:
            if name not in inputs:
                self._raise_names(inputs)
            raw = inputs[name]
            if (
                type(raw) is np.ndarray
                and raw.dtype == want
                and raw.ndim == rank
                and raw.size
                and raw.flags.c_contiguous
            ):
                shape = raw.shape
                for axis, size in fixed:
                    if shape[axis] != size:
                        break
                else:
                    out[name] = raw
                    continue
            out[name] = self._one(name, raw)
        if self._has_symbols:
            self._check_symbols(out)
        return out

    def _raise_names(self, inputs: Mapping[str, Any]) -> None:
        missing = [n for n in self.names if n not in inputs]
        unknown = [str(k) for k in inputs if k not in self._by_name]
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
        expected = ", ".join(f"{s.name!r} ({s.describe()})" for s in self.specs)
        raise InputError(f"{'; '.join(parts)}; the model expects {expected}")

    def _one(self, name: str, raw: Any) -> np.ndarray:
        want = self._np[name]
        value: np.ndarray = raw if type(raw) is np.ndarray else self._as_array(name, raw)
        rank = self._rank[name]
        shape = value.shape
        if rank >= 0:
            if len(shape) != rank:
                raise self._shape_error(name, value, f"rank {len(shape)}, expected rank {rank}")
            for axis, size in self._fixed[name]:
                if shape[axis] != size:
                    raise self._shape_error(
                        name, value, f"dimension {axis} is {shape[axis]}, expected {size}"
                    )
        if value.size == 0:
            raise self._shape_error(name, value, "the input is empty (a dimension is 0)")
        if value.dtype != want:
            value = self._convert(name, value)
        if not value.flags.c_contiguous:
            value = np.ascontiguousarray(value)
        return value

    def _as_array(self, name: str, value: Any) -> np.ndarray:
        spec = self._by_name[name]
        if isinstance(value, (str, bytes)) and spec.dtype != "bytes":
            raise InputError(
                f"input {name!r}: expected {spec.describe()}, got a {type(value).__name__}"
            )
        try:
            arr = np.asarray(value, dtype=object if spec.dtype == "bytes" else None)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"input {name!r}: expected {spec.describe()}, got a value numpy cannot "
                f"read as an array ({exc})"
            ) from None
        if arr.dtype == object and spec.dtype != "bytes":
            raise InputError(
                f"input {name!r}: expected {spec.describe()}, got a ragged or mixed-type "
                f"{type(value).__name__} (object array)"
            )
        return arr

    def _convert(self, name: str, value: np.ndarray) -> np.ndarray:
        spec = self._by_name[name]
        want = spec.dt.numpy
        have = value.dtype.kind
        target = want.kind
        if spec.dtype == "bytes":
            if have in "SUO":
                return value.astype(object)
        elif have in "OSUV":
            pass  # strings/objects for a numeric input: always an error
        elif target == "f" and have in _FLOAT_FROM:
            return value.astype(want)
        elif target in "iu" and have in _INT_FROM:
            if np.can_cast(value.dtype, want, "safe") or value.size == 0:
                return value.astype(want)
            info = np.iinfo(want)
            lo, hi = value.min(), value.max()
            if lo >= info.min and hi <= info.max:
                return value.astype(want)
            raise InputError(
                f"input {name!r}: expected {spec.describe()}, got {_describe_value(value)} "
                f"with values in [{lo}, {hi}] that do not fit {spec.dtype}"
            )
        hint = ""
        if target in "iu" and have == "f":
            hint = " (float -> integer would truncate; convert explicitly if you mean it)"
        elif have in "OSU":
            hint = " (strings or objects cannot feed a numeric input)"
        raise InputError(
            f"input {name!r}: expected {spec.describe()}, got {_describe_value(value)}{hint}"
        )

    def _shape_error(self, name: str, value: np.ndarray, why: str) -> InputError:
        spec = self._by_name[name]
        return InputError(
            f"input {name!r}: expected {spec.describe()}, got {_describe_value(value)}: {why}"
        )

    def _check_symbols(self, arrays: Mapping[str, np.ndarray]) -> None:
        seen: dict[str, tuple[int, str]] = {}
        for name in self.names:
            shape = arrays[name].shape
            for axis, sym in self._symbols[name]:
                size = shape[axis]
                if sym in seen and seen[sym][0] != size:
                    other_size, other = seen[sym]
                    raise InputError(
                        f"input {name!r}: dimension {axis} ({sym!r}) is {size}, but input "
                        f"{other!r} has {sym!r} = {other_size}; they must agree"
                    )
                seen.setdefault(sym, (size, name))
