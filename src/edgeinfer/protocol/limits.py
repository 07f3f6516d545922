"""Limits on untrusted messages, checked by every decoder before it allocates anything.

A message's sizes come from whoever sent it. Before a decoder trusts a shape it checks the
rank, every dimension and the bytes the shape would need (``prod(shape) x itemsize``, in
Python integers, so nothing overflows), and it checks JSON nesting before parsing deeply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.tensors import dtype_from_oip

__all__ = ["Limits", "check_json_depth", "element_count"]


@dataclass(frozen=True)
class Limits:
    """How much one message may ask for."""

    max_body_bytes: int = 64 << 20  # bytes: a whole request body (REST) or message (gRPC)
    max_json_depth: int = 32  # nesting levels of [ and { in a JSON document
    max_tensor_bytes: int = 64 << 20  # bytes: one tensor's data, as its shape and dtype say
    max_rank: int = 16  # dimensions of one tensor
    max_tensors: int = 256  # inputs or outputs in one message


def element_count(
    name: str, shape: object, datatype: str, limits: Limits
) -> tuple[tuple[int, ...], int]:
    """Check a tensor's claimed shape; return it as ints and its element count.

    Raises :class:`ProtocolError` for a shape that is not a list of integers >= 0, has too
    many dimensions, or would need more than ``limits.max_tensor_bytes``.
    """
    if not isinstance(shape, (list, tuple)):
        raise ProtocolError(f"tensor {name!r}: 'shape' must be a list of integers")
    if len(shape) > limits.max_rank:
        raise ProtocolError(
            f"tensor {name!r}: shape has {len(shape)} dimensions, more than the limit "
            f"{limits.max_rank}"
        )
    dims: list[int] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise ProtocolError(
                f"tensor {name!r}: dimension {d!r} is not an integer; 'shape' must be a list "
                "of integers >= 0"
            )
        if d < 0:
            raise ProtocolError(
                f"tensor {name!r}: dimension {int(d)} is negative; a request's dimensions "
                "must be sizes >= 0"
            )
        dims.append(int(d))
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow, however absurd the dims
    itemsize = max(dtype_from_oip(datatype).itemsize, 1)  # BYTES: at least 1 byte each
    if count * itemsize > limits.max_tensor_bytes:
        raise ProtocolError(
            f"tensor {name!r}: shape {dims} of {datatype} needs {count * itemsize} bytes, "
            f"more than the limit of {limits.max_tensor_bytes} bytes per tensor"
        )
    return tuple(dims), count


_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[ord("[")] = _OPEN[ord("{")] = 1
_OPEN[ord("]")] = _OPEN[ord("}")] = -1
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string literal


def check_json_depth(text: bytes, limit: int) -> None:
    """Raise :class:`ProtocolError` if the JSON ``text`` nests deeper than ``limit``.

    Strings are blanked out first (they may hold brackets); the rest is a vectorized
    running sum of opening minus closing brackets, so a flat multi-megabyte tensor costs
    about as much as copying it once.
    """
    if limit <= 0 or text.count(b"[") + text.count(b"{") <= limit:
        return
    if b'"' in text:
        text = _STRING.sub(b'""', text)
    steps = _OPEN[np.frombuffer(text, dtype=np.uint8)]
    depth = int(np.cumsum(steps, dtype=np.int64).max(initial=0))
    if depth > limit:
        raise ProtocolError(f"JSON nesting is {depth} levels deep, more than the limit of {limit}")
