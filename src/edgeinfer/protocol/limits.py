"""Limits on untrusted messages, checked by every decoder before it allocates anything.

A message's sizes come from whoever sent it. Before a decoder trusts a shape it checks the
rank, every dimension and the bytes the shape would need (``prod(shape) x itemsize``, in
Python integers, so nothing overflows), and it checks JSON nesting before parsing deeply.
A zero-sized shape such as ``[0, 2**62]`` needs no bytes, but numpy still refuses to build
it, so the dimensions other than the zeros must fit the per-tensor limit too.

:func:`body_bound` turns a model's signature into the most bytes a request for it can need,
which the server uses in place of the general body limit: a request for a model of four
float inputs at a batch of eight never needs megabytes, whatever its encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.tensors import dtype_from_oip

__all__ = ["JSON_BYTES_PER_VALUE", "Limits", "body_bound", "check_json_depth", "element_count"]


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
    count = nonzero = 1
    for d in dims:
        count *= d  # Python ints: no overflow, however absurd the dims
        nonzero *= d or 1
    itemsize = max(dtype_from_oip(datatype).itemsize, 1)  # BYTES: at least 1 byte each
    if count * itemsize > limits.max_tensor_bytes:
        raise ProtocolError(
            f"tensor {name!r}: shape {dims} of {datatype} needs {count * itemsize} bytes, "
            f"more than the limit of {limits.max_tensor_bytes} bytes per tensor"
        )
    if nonzero * itemsize > limits.max_tensor_bytes:  # [0, 2**62]: empty, yet unbuildable
        raise ProtocolError(
            f"tensor {name!r}: shape {dims} of {datatype} is empty, but its other dimensions "
            f"would need {nonzero * itemsize} bytes, more than the limit of "
            f"{limits.max_tensor_bytes} bytes per tensor"
        )
    return tuple(dims), count


# The JSON text one tensor value may take in a request: the longest float64 repr is 24
# characters, and a separator and some indentation come with it.
JSON_BYTES_PER_VALUE = 48
_BODY_SLACK = 64 << 10  # bytes: a request's id, parameters, output list and tensor headers


def body_bound(values: int | None, limits: Limits) -> int:
    """The most bytes a request body whose inputs hold at most ``values`` values may take.

    ``values``: the sum over a model's inputs of their element counts at the largest batch
    the server accepts, or ``None`` when the signature sets no bound (a dynamic dimension
    other than the batch, or a BYTES input). Covers JSON (``JSON_BYTES_PER_VALUE`` each)
    and binary data (at most 8 bytes each); never more than ``limits.max_body_bytes``.
    """
    if values is None:
        return limits.max_body_bytes
    return min(limits.max_body_bytes, _BODY_SLACK + values * JSON_BYTES_PER_VALUE)


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
