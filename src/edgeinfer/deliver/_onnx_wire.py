"""Where the tensors are inside an ONNX file (or a packed bundle), byte for byte.

A TFLite model (a flatbuffer, a bundle's ``.tflite`` member or a bare file) is walked by
:mod:`edgeinfer.deliver._tflite_wire` instead; its buffers are reported as tensor spans.

The tensor-aware delta must rebuild a bundle *byte-identical* to the published one, so it
cannot parse and re-serialize the model (protobuf output is not guaranteed to round-trip).
Instead this module walks the protobuf wire format and reports the exact byte span of each
tensor's ``raw_data`` (initializers, and tensors in node attributes such as ``Constant``,
subgraphs included). Everything else -- the graph, tar headers, the manifest -- is "literal"
bytes. A file that does not parse simply has no tensor spans.

Wire format: each field is ``varint(field_number << 3 | wire_type)`` followed by a varint
(type 0), 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5).
"""

from __future__ import annotations

import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.deliver._tflite_wire import is_tflite, tflite_spans

__all__ = ["ELEMENT_SIZE", "TensorSpan", "tensor_spans"]

# ONNX TensorProto.DataType -> bytes per element (for byte shuffling before compression)
ELEMENT_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}

# field numbers (onnx.proto)
_MODEL_GRAPH = 7
_MODEL_FUNCTIONS = 25
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_ATTRIBUTE = 5
_FUNCTION_NODE = 7
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW = 2, 8, 9
_MAX_DEPTH = 16


@dataclass(frozen=True)
class TensorSpan:
    """A tensor's ``raw_data`` bytes at ``offset`` (absolute, in the whole file)."""

    name: str
    offset: int
    length: int  # bytes
    data_type: int  # ONNX TensorProto.DataType


class _WireError(ValueError):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) for each field in [start, end)."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wtype = key >> 3, key & 7
        if wtype == 0:
            _, nxt = _varint(buf, pos, end)
        elif wtype == 1:
            nxt = pos + 8
        elif wtype == 2:
            size, pos = _varint(buf, pos, end)
            nxt = pos + size
        elif wtype == 5:
            nxt = pos + 4
        else:
            raise _WireError(f"unsupported wire type {wtype}")
        if nxt > end:
            raise _WireError("field runs past its message")
        out.append((field, wtype, pos, nxt))
        pos = nxt
    return out


def _tensor(buf: memoryview, start: int, end: int, out: list[TensorSpan]) -> None:
    name, dtype, raw = "", 0, None
    for field, wtype, s, e in _fields(buf, start, end):
        if field == _TENSOR_NAME and wtype == 2:
            name = bytes(buf[s:e]).decode("utf-8", "replace")
        elif field == _TENSOR_DATA_TYPE and wtype == 0:
            dtype, _ = _varint(buf, s, e)
        elif field == _TENSOR_RAW and wtype == 2:
            raw = (s, e)
    if raw is not None and raw[1] > raw[0]:
        out.append(TensorSpan(name, raw[0], raw[1] - raw[0], dtype))


def _graph(buf: memoryview, start: int, end: int, out: list[TensorSpan], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _WireError("graphs nested too deeply")
    for field, wtype, s, e in _fields(buf, start, end):
        if wtype != 2:
            continue
        if field == _GRAPH_INITIALIZER:
            _tensor(buf, s, e, out)
        elif field == _GRAPH_NODE:
            _node(buf, s, e, out, depth)


def _node(buf: memoryview, start: int, end: int, out: list[TensorSpan], depth: int) -> None:
    for field, wtype, s, e in _fields(buf, start, end):
        if field != _NODE_ATTRIBUTE or wtype != 2:
            continue
        for afield, awtype, a_s, a_e in _fields(buf, s, e):
            if awtype != 2:
                continue
            if afield in (_ATTR_T, _ATTR_TENSORS):
                _tensor(buf, a_s, a_e, out)
            elif afield in (_ATTR_G, _ATTR_GRAPHS):
                _graph(buf, a_s, a_e, out, depth + 1)


def _model(buf: memoryview, start: int, end: int) -> list[TensorSpan]:
    out: list[TensorSpan] = []
    for field, wtype, s, e in _fields(buf, start, end):
        if wtype != 2:
            continue
        if field == _MODEL_GRAPH:
            _graph(buf, s, e, out, 0)
        elif field == _MODEL_FUNCTIONS:
            for ffield, fwtype, f_s, f_e in _fields(buf, s, e):
                if ffield == _FUNCTION_NODE and fwtype == 2:
                    _node(buf, f_s, f_e, out, 1)
    return out


def tensor_spans(path: Path, buf: memoryview, min_bytes: int = 64) -> list[TensorSpan]:
    """Tensor spans of ``path`` (contents ``buf``): a packed bundle's ``.onnx`` and
    ``.tflite`` members, or the file itself when it is an ONNX or TFLite model. Sorted by
    offset, non-overlapping; spans shorter than ``min_bytes`` are left to the literal bytes.
    """
    regions: list[tuple[int, int]] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".onnx", ".tflite")):
                    regions.append((member.offset_data, member.offset_data + member.size))
    except (tarfile.TarError, OSError, EOFError):
        regions = [(0, len(buf))]
    spans: list[TensorSpan] = []
    for start, end in regions:
        if end > len(buf):
            continue
        try:
            if is_tflite(buf, start, end):
                found = [TensorSpan(*span) for span in tflite_spans(buf, start, end)]
            else:
                found = _model(buf, start, end)
        except (ValueError, struct.error):  # _WireError is a ValueError
            continue  # neither ONNX nor TFLite after all: its bytes stay literal
        spans.extend(s for s in found if s.length >= min_bytes)
    spans.sort(key=lambda s: s.offset)
    clean: list[TensorSpan] = []
    for span in spans:
        if not clean or span.offset >= clean[-1].offset + clean[-1].length:
            clean.append(span)
    return clean
