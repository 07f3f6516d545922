"""What a remote answer may be: its size bound and its check against the model's outputs.

A server's answer is untrusted input. The client knows the model's output signature from
its metadata, so it knows how large an honest answer can be (:func:`answer_limit`: every
output's elements at the batch's rows, each at its widest encoding, plus the JSON around
them) and what it must hold (:func:`check_answer`: the outputs asked for, each with the
declared dtype and a shape that fits). An answer that does not fit is a
:class:`~edgeinfer.offload.errors.RemoteProtocolError`: a remote failure the offloader
counts against the server and answers locally, never a result.

A dynamic leading output dimension is taken to be the batch (the inputs' rows); an output
with any other dynamic dimension, or of ``BYTES``, has no size bound from the signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from edgeinfer.offload.errors import RemoteProtocolError
from edgeinfer.tensors import TensorSpec, format_shape

__all__ = ["answer_limit", "batch_rows", "check_answer"]

_JSON_ELEMENT = 32  # bytes: the widest JSON number, "-2.2250738585072014e-308, " and room
_OVERHEAD = 64 << 10  # bytes: model name, id, parameters, binary-extension headers
_PER_OUTPUT = 1 << 10  # bytes: one output's name, datatype, shape and parameters


def batch_rows(feeds: Mapping[str, np.ndarray]) -> int:
    """The batch's rows: the largest leading dimension among the inputs (1 for scalars)."""
    return max((a.shape[0] for a in feeds.values() if a.ndim), default=1)


def answer_limit(specs: Sequence[TensorSpec], rows: int) -> int | None:
    """Bytes an honest answer with these outputs can take at ``rows`` rows (``None``: no
    bound, as for ``BYTES`` outputs or dynamic dimensions past the first)."""
    total = _OVERHEAD
    for spec in specs:
        if spec.shape is None or spec.dt.itemsize == 0:
            return None
        dims = [d if isinstance(d, int) else rows if i == 0 else None
                for i, d in enumerate(spec.shape)]  # fmt: skip
        if any(d is None for d in dims):
            return None
        elements = math.prod(d for d in dims if d is not None)
        total += elements * max(spec.dt.itemsize, _JSON_ELEMENT) + _PER_OUTPUT
    return total


def check_answer(
    arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], url: str
) -> dict[str, np.ndarray]:
    """``arrays`` if they are exactly the outputs ``specs`` (names, dtypes, shapes)."""
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in arrays]
    if missing:
        raise RemoteProtocolError(
            f"the answer lacks output(s) {', '.join(map(repr, missing))}; expected "
            f"{', '.join(map(repr, expected))}",
            url=url,
        )
    extra = [n for n in arrays if n not in expected]
    if extra:
        raise RemoteProtocolError(
            f"the answer has output(s) {', '.join(map(repr, extra))} that were not asked "
            f"for; expected {', '.join(map(repr, expected))}",
            url=url,
        )
    for name, spec in expected.items():
        value = arrays[name]
        if not _fits(value, spec):
            got = f"{value.dtype} {format_shape(value.shape)}"
            raise RemoteProtocolError(
                f"output {name!r}: expected {spec.describe()}, the answer has {got}", url=url
            )
    return dict(arrays)


def _fits(value: np.ndarray, spec: TensorSpec) -> bool:
    if spec.dtype == "bytes":
        if value.dtype.kind not in "OSU":
            return False
    elif value.dtype != spec.dt.numpy:
        return False
    if spec.shape is None:
        return True
    if value.ndim != len(spec.shape):
        return False
    pairs = zip(spec.shape, value.shape, strict=True)
    return all(not isinstance(d, int) or d == n for d, n in pairs)
