"""Tensor contents on the wire: raw little-endian bytes and JSON lists, both directions.

Shared by the REST codec (JSON ``data`` and the binary tensor data extension) and the gRPC
codec (``raw_input_contents`` / ``raw_output_contents``). Raw data is the flattened,
row-major tensor without padding; a BYTES element is a 4-byte little-endian length followed
by its bytes. Every decoder checks the claimed shape against :class:`Limits` first and the
data against the shape after, so a lying message is a :class:`ProtocolError`, never a crash;
where the data's length already rules a claim out (a BYTES element takes at least 4 bytes, a
flat JSON list has as many values as its length), that check comes before any allocation.

NaN and the infinities are not JSON numbers (RFC 8259), so JSON data carries them as the
strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (protobuf's JSON mapping spells them so,
and ``np.array(data, dtype=np.float32)``, which tritonclient uses, reads them back). Float
data is read from those strings and from the bare tokens ``NaN``/``Infinity`` that Triton
writes; the binary encodings carry every value bit for bit.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.limits import Limits, element_count
from edgeinfer.tensors import DType, dtype_from_oip, format_shape

__all__ = [
    "array_from_json",
    "array_from_raw",
    "array_to_json",
    "array_to_raw",
    "check_datatype",
    "deserialize_bytes",
    "serialize_bytes",
]

_LEN = struct.Struct("<I")


def check_datatype(name: str, datatype: object) -> DType:
    """The :class:`DType` for a tensor's OIP datatype, or a :class:`ProtocolError`."""
    if not isinstance(datatype, str):
        raise ProtocolError(f"tensor {name!r}: 'datatype' must be a string such as 'FP32'")
    try:
        return dtype_from_oip(datatype)
    except ValueError as exc:
        raise ProtocolError(f"tensor {name!r}: {exc}") from None


def _wire_dtype(dt: DType) -> np.dtype[Any]:
    """Raw data is little-endian whatever the host is."""
    return dt.numpy.newbyteorder("<") if dt.numpy.itemsize > 1 else dt.numpy


# ---------------------------------------------------------------- raw bytes
def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> length-prefixed elements (row-major)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(name: str, buf: bytes | memoryview, count: int) -> np.ndarray:
    """Length-prefixed elements -> flat object array of ``count`` bytes objects."""
    view = memoryview(buf)
    pos, end = 0, len(view)
    if count * _LEN.size > end:  # before allocating: the shape may claim millions
        raise ProtocolError(
            f"tensor {name!r}: {end} bytes of BYTES data cannot hold {count} elements "
            f"(each element is a 4-byte little-endian length, then the bytes: at least "
            f"{count * _LEN.size} bytes)"
        )
    out = np.empty(count, dtype=object)
    for i in range(count):
        if pos + 4 > end:
            raise ProtocolError(
                f"tensor {name!r}: BYTES data ends after {i} of {count} elements "
                "(each element is a 4-byte little-endian length, then the bytes)"
            )
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise ProtocolError(
                f"tensor {name!r}: BYTES element {i} claims {n} bytes but only {end - pos} remain"
            )
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != end:
        raise ProtocolError(
            f"tensor {name!r}: {end - pos} bytes left over after {count} BYTES elements"
        )
    return out


def array_to_raw(array: np.ndarray, datatype: str) -> bytes:
    """An array as raw wire bytes for ``datatype``."""
    dt = dtype_from_oip(datatype)
    if dt.name == "bytes":
        return serialize_bytes(array)
    arr = np.ascontiguousarray(array, dtype=_wire_dtype(dt))
    return arr.tobytes()


def array_from_raw(
    name: str,
    buf: bytes | memoryview,
    datatype: object,
    shape: object,
    limits: Limits,
) -> np.ndarray:
    """Raw wire bytes -> an array of ``shape``; the byte count must match exactly.

    Numeric arrays view ``buf`` without copying when it is aligned (they are read-only).
    """
    dt = check_datatype(name, datatype)
    dims, count = element_count(name, shape, dt.oip, limits)
    if dt.name == "bytes":
        return deserialize_bytes(name, buf, count).reshape(dims)
    need = count * dt.itemsize
    if len(buf) != need:
        raise ProtocolError(
            f"tensor {name!r}: {len(buf)} bytes of data, but shape {format_shape(dims)} of "
            f"{dt.oip} needs {need} bytes"
        )
    arr = np.frombuffer(buf, dtype=_wire_dtype(dt), count=count)
    if arr.dtype != dt.numpy or not arr.flags.aligned:
        arr = arr.astype(dt.numpy)  # big-endian host or an unaligned view: copy once
    return arr.reshape(dims)


# ---------------------------------------------------------------- JSON lists
_KINDS = {"b": "boolean", "i": "integer", "u": "integer", "f": "number", "U": "string"}


def array_from_json(
    name: str, data: object, datatype: object, shape: object, limits: Limits
) -> np.ndarray:
    """JSON ``data`` (flat row-major or nested as the shape) -> an array of ``shape``.

    Values must be of the datatype's kind: booleans for BOOL, integers that fit for the
    integer types, numbers for the float types, strings for BYTES. Nothing else is coerced.
    """
    dt = check_datatype(name, datatype)
    dims, count = element_count(name, shape, dt.oip, limits)
    if not isinstance(data, list):
        raise ProtocolError(
            f"tensor {name!r}: 'data' must be a JSON array, got {type(data).__name__}"
        )
    if len(data) > max(count, dims[0] if dims else 1):  # before numpy copies it
        raise ProtocolError(
            f"tensor {name!r}: 'data' has {len(data)} values, but shape {format_shape(dims)} "
            f"needs {count}"
        )
    raw = _json_array(name, data, dt, dims, count)
    if dt.numpy.kind == "f" and raw.dtype.kind in "UO":  # strings: "NaN" and the infinities?
        raw = _json_array(name, _floats_from_json(data), dt, dims, count)
    if raw.ndim != 1 and raw.shape != dims:
        raise ProtocolError(
            f"tensor {name!r}: 'data' is nested as {format_shape(raw.shape)}; expected a flat "
            f"list of {count} values or nesting as the shape {format_shape(dims)}"
        )
    if raw.size != count:
        raise ProtocolError(
            f"tensor {name!r}: 'data' has {raw.size} values, but shape {format_shape(dims)} "
            f"needs {count}"
        )
    return _convert(name, raw, dt).reshape(dims)


def _json_array(
    name: str, data: list[Any], dt: DType, dims: tuple[int, ...], count: int
) -> np.ndarray:
    try:
        return np.array(data, dtype=object if dt.name == "bytes" else None)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(
            f"tensor {name!r}: 'data' is not a regular array of values ({exc}); "
            f"expected {count} {dt.oip} values, flat or nested as {format_shape(dims)}"
        ) from None


_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_NON_FINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _floats_from_json(data: list[Any]) -> list[Any]:
    """``data`` with the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` read as floats
    (nested lists too); any other string stays, for the kind check to refuse."""
    return [
        _floats_from_json(v)
        if isinstance(v, list)
        else _NON_FINITE.get(v, v)
        if isinstance(v, str)
        else v
        for v in data
    ]


def _convert(name: str, raw: np.ndarray, dt: DType) -> np.ndarray:
    if dt.name == "bytes":
        flat = raw.reshape(-1)
        out = np.empty(flat.size, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise ProtocolError(
                    f"tensor {name!r}: BYTES data must be strings, got {type(v).__name__}"
                )
            out[i] = v.encode("utf-8")
        return out
    if raw.size == 0:
        return raw.astype(dt.numpy)
    kind, want = raw.dtype.kind, dt.numpy.kind
    ok = (
        (want == "b" and kind == "b")
        or (want in "iu" and kind in "iu")
        or (want == "f" and kind in "iuf")
    )
    if not ok:
        got = _KINDS.get(kind, "mixed or non-scalar")
        expected = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[want]
        raise ProtocolError(f"tensor {name!r}: {dt.oip} data must be {expected}, got {got} values")
    if want in "iu" and raw.dtype != dt.numpy:
        info = np.iinfo(dt.numpy)
        lo, hi = raw.min(), raw.max()
        if lo < info.min or hi > info.max:
            raise ProtocolError(f"tensor {name!r}: values in [{lo}, {hi}] do not fit {dt.oip}")
    return raw.astype(dt.numpy, copy=False)


def array_to_json(name: str, array: np.ndarray, datatype: str) -> list[Any]:
    """An array as a flat JSON list (BYTES as UTF-8 strings)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
        except UnicodeDecodeError:
            raise ProtocolError(
                f"tensor {name!r}: BYTES values are not UTF-8 text and cannot travel as "
                "JSON; ask for binary data"
            ) from None
    if datatype == "FP16":
        flat = flat.astype(np.float32)
    values: list[Any] = flat.tolist()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        for i in np.flatnonzero(~np.isfinite(flat)).tolist():
            values[i] = _NON_FINITE_JSON[str(values[i])]
    return values
