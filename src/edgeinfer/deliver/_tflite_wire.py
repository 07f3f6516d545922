"""Where the tensors are inside a TFLite model (a flatbuffer), byte for byte.

The TFLite counterpart of :mod:`edgeinfer.deliver._onnx_wire`: the tensor-aware delta
needs the exact byte span of each weight so that an unchanged one is a reference into the
base and a changed one is compressed alone. A ``.tflite`` file is a flatbuffer whose root
``Model`` table holds ``buffers`` (each a ``Buffer`` table with a ``data`` byte vector) and
``subgraphs`` whose ``Tensor`` tables name the buffer they read. Each buffer's data is one
span, named after the first tensor that reads it (so a re-converted model matches by name)
and typed by that tensor's element type. Buffers stored outside the flatbuffer (models over
2 GB: ``Buffer.offset``/``size``) stay literal bytes, as does anything that does not parse.

Flatbuffer layout: a table at ``t`` starts with an int32 ``t - vtable``; the vtable holds
uint16 sizes then one uint16 offset per field (0: absent). Offsets to tables, vectors and
strings are uint32s relative to where they are stored; a vector is a uint32 count then
its elements.
"""

from __future__ import annotations

import struct

__all__ = ["IDENTIFIER", "is_tflite", "tflite_spans"]

IDENTIFIER = b"TFL3"  # the file identifier at bytes 4..8 of a TFLite flatbuffer

# Model table fields, Buffer and Tensor fields (tensorflow/compiler/mlir/lite/schema.fbs)
_MODEL_SUBGRAPHS, _MODEL_BUFFERS = 2, 4
_SUBGRAPH_TENSORS = 0
_TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME = 1, 2, 3
_BUFFER_DATA = 0
# TFLite TensorType -> the ONNX TensorProto.DataType of the same element (ELEMENT_SIZE keys)
_ONNX_TYPE = {0: 1, 1: 10, 2: 6, 3: 2, 4: 7, 6: 9, 7: 5, 9: 3, 10: 11, 12: 13, 15: 12, 16: 4}
_ONNX_TYPE[18] = 16  # BFLOAT16


class _Flat:
    """Bounds-checked reads of one flatbuffer inside ``buf[start:end]``."""

    def __init__(self, buf: memoryview, start: int, end: int) -> None:
        self.buf, self.start, self.end = buf, start, end
        # Tables visited in all: a well-formed file has fewer than one per 4 bytes; a
        # crafted one pointing many vectors at the same tables would take quadratic time.
        self.budget = (end - start) // 4

    def _u(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < self.start or pos + size > self.end:
            raise ValueError("read outside the flatbuffer")
        return int(struct.unpack_from(fmt, self.buf, pos)[0])

    def field(self, table: int, index: int) -> int | None:
        """Where field ``index`` of the table at ``table`` is stored, or None if absent."""
        vtable = table - self._u("<i", table)
        vsize = self._u("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self._u("<H", vtable + slot)
        return table + off if off else None

    def deref(self, pos: int) -> int:
        return pos + self._u("<I", pos)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(first element's position, count) of a vector field; (0, 0) if absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = self.deref(pos)
        count = self._u("<I", vec)
        return vec + 4, count

    def tables(self, table: int, index: int) -> list[int]:
        first, count = self.vector(table, index)
        self.budget -= count
        if self.budget < 0:
            raise ValueError("more tables than the flatbuffer can hold")
        return [self.deref(first + 4 * i) for i in range(count)]

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._u(fmt, pos)

    def string(self, table: int, index: int) -> str:
        first, count = self.vector(table, index)
        if first + count > self.end:
            raise ValueError("string runs past the flatbuffer")
        return bytes(self.buf[first : first + count]).decode("utf-8", "replace")


def is_tflite(buf: memoryview, start: int, end: int) -> bool:
    return end - start >= 8 and bytes(buf[start + 4 : start + 8]) == IDENTIFIER


def tflite_spans(buf: memoryview, start: int, end: int) -> list[tuple[str, int, int, int]]:
    """(name, offset, length, ONNX data type) of each buffer's data in the TFLite model in
    ``buf[start:end]`` (offsets absolute, in ``buf``).

    Raises ``ValueError`` when the bytes are not a well-formed TFLite flatbuffer.
    """
    flat = _Flat(buf, start, end)
    model = flat.deref(start)
    readers: dict[int, tuple[str, int]] = {}  # buffer index -> (tensor name, ONNX type)
    for subgraph in flat.tables(model, _MODEL_SUBGRAPHS):
        for tensor in flat.tables(subgraph, _SUBGRAPH_TENSORS):
            index = flat.scalar(tensor, _TENSOR_BUFFER, "<I", 0)
            if index and index not in readers:
                ttype = flat.scalar(tensor, _TENSOR_TYPE, "<b", 0)
                readers[index] = (flat.string(tensor, _TENSOR_NAME), _ONNX_TYPE.get(ttype, 2))
    out = []
    for i, buffer in enumerate(flat.tables(model, _MODEL_BUFFERS)):
        first, count = flat.vector(buffer, _BUFFER_DATA)
        if not count:
            continue
        if first + count > end:
            raise ValueError("buffer runs past the flatbuffer")
        name, onnx_type = readers.get(i, (f"buffer:{i}", 2))
        out.append((name, first, count, onnx_type))
    return out
