"""The tensor-aware delta: ship the tensors that changed, refer to the ones that did not.

The target file is cut into the ``raw_data`` of its tensors and the literal bytes around
them (graph, tar headers, manifest, golden sample; :mod:`edgeinfer.deliver._onnx_wire`).
Tensors are matched to the base **by name** (then by content): an unchanged tensor is a
reference into the base, a changed one is shipped zstd-compressed -- byte-shuffled by
element size, and XOR-ed with the base tensor when that compresses better (a fine-tune
flips mostly low mantissa bits). The literal bytes are shipped as one zstd stream
compressed against the base's literal bytes as a dictionary, so an unchanged graph costs
almost nothing.

The header's ``ops`` rebuild the target in order: ``["L", n]`` n literal bytes, ``["R",
offset, n]`` bytes of the base, ``["N", blob, n, element size]`` a shipped tensor, ``["X",
blob, n, element size, offset]`` one XOR-ed with the base at ``offset``; ``dict`` lists the
base's literal spans that make the dictionary. Blob 0 is the literal stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.deliver._delta_file import load_zstd
from edgeinfer.deliver._onnx_wire import ELEMENT_SIZE, TensorSpan, tensor_spans
from edgeinfer.deliver.errors import DeltaError

__all__ = ["apply_tensor", "tensor_delta"]

_SAMPLE = 1 << 20  # bytes of a changed tensor used to choose between plain and XOR


def _shuffle(data: bytes | memoryview, es: int) -> bytes:
    if es <= 1 or len(data) % es:
        return bytes(data)
    return bytes(np.frombuffer(data, np.uint8).reshape(-1, es).T.tobytes())


def _unshuffle(data: bytes, es: int) -> bytes:
    if es <= 1 or len(data) % es:
        return data
    return bytes(np.frombuffer(data, np.uint8).reshape(es, -1).T.tobytes())


def _xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    return bytes(np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)).tobytes())


def _xor_wins(compressor: Any, data: memoryview, xored: bytes, es: int) -> bool:
    """Does the XOR with the base tensor compress better? Large tensors decide on a sample."""
    n = min(len(data), _SAMPLE - _SAMPLE % max(es, 1))
    plain = len(compressor.compress(_shuffle(data[:n], es)))
    return len(compressor.compress(_shuffle(xored[:n], es))) < plain


def _literal_spans(length: int, spans: list[TensorSpan]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for s in spans:
        if s.offset > pos:
            out.append((pos, s.offset - pos))
        pos = s.offset + s.length
    if pos < length:
        out.append((pos, length - pos))
    return out


def _dict(zstd: Any, data: bytes) -> Any:
    return zstd.ZstdCompressionDict(data, dict_type=zstd.DICT_TYPE_RAWCONTENT) if data else None


def tensor_delta(
    base_path: Path,
    base: memoryview,
    target_path: Path,
    target: memoryview,
    *,
    level: int,  # zstd level for changed tensors
    literal_level: int,  # zstd level for the literal stream
    min_tensor_bytes: int,  # bytes: smaller tensors travel with the literal bytes
) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
    zstd = load_zstd()
    b_spans = tensor_spans(base_path, base, min_tensor_bytes)
    t_spans = tensor_spans(target_path, target, min_tensor_bytes)
    by_name = {s.name: s for s in b_spans}
    by_content: dict[tuple[int, bytes], TensorSpan] = {}
    for s in b_spans:
        key = (s.length, hashlib.blake2b(base[s.offset : s.offset + s.length]).digest())
        by_content.setdefault(key, s)
    b_lits = _literal_spans(len(base), b_spans)
    dict_bytes = b"".join(bytes(base[o : o + n]) for o, n in b_lits)
    compressor = zstd.ZstdCompressor(level=level)
    ops: list[list[Any]] = []
    blobs: list[bytes] = [b""]  # blob 0: the literal stream, filled in below
    literals: list[bytes] = []
    stats = {"tensors": len(t_spans), "referenced": 0, "changed": 0, "xor": 0, "new": 0}

    def ref(off: int, n: int) -> None:
        if ops and ops[-1][0] == "R" and ops[-1][1] + ops[-1][2] == off:
            ops[-1][2] += n
        else:
            ops.append(["R", off, n])

    pos = 0
    for span in t_spans:
        if span.offset > pos:
            ops.append(["L", span.offset - pos])
            literals.append(bytes(target[pos : span.offset]))
        data = target[span.offset : span.offset + span.length]
        old = by_name.get(span.name)
        if (
            old is not None
            and old.length == span.length
            and base[old.offset : old.offset + old.length] == data
        ):
            ref(old.offset, span.length)
            stats["referenced"] += 1
        else:
            hit = by_content.get((span.length, hashlib.blake2b(data).digest()))
            if hit is not None and base[hit.offset : hit.offset + hit.length] == data:
                ref(hit.offset, span.length)
                stats["referenced"] += 1
            else:
                es = ELEMENT_SIZE.get(span.data_type, 1)
                op: list[Any] = ["N", len(blobs), span.length, es]
                if old is not None and old.length == span.length:
                    xored = _xor(data, base[old.offset : old.offset + old.length])
                    if _xor_wins(compressor, data, xored, es):
                        op = ["X", len(blobs), span.length, es, old.offset]
                        data = memoryview(xored)
                best = compressor.compress(_shuffle(data, es))
                stats["changed" if old is not None else "new"] += 1
                stats["xor"] += op[0] == "X"
                ops.append(op)
                blobs.append(best)
        pos = span.offset + span.length
    if pos < len(target):
        ops.append(["L", len(target) - pos])
        literals.append(bytes(target[pos:]))
    lit = b"".join(literals)
    lit_c = zstd.ZstdCompressor(level=literal_level, dict_data=_dict(zstd, dict_bytes))
    blobs[0] = lit_c.compress(lit)
    stats["literal_bytes"] = len(lit)
    stats["literal_compressed"] = len(blobs[0])
    return {"ops": ops, "dict": [list(x) for x in b_lits]}, blobs, stats


def apply_tensor(header: dict[str, Any], base: memoryview, blobs: list[bytes]) -> Iterator[bytes]:
    zstd = load_zstd()
    dict_spans = header["dict"]
    for o, n in dict_spans:
        if o < 0 or n < 0 or o + n > len(base):
            raise DeltaError("delta: dictionary span outside the base file")
    dict_bytes = b"".join(bytes(base[o : o + n]) for o, n in dict_spans)
    lit = zstd.ZstdDecompressor(dict_data=_dict(zstd, dict_bytes)).decompress(blobs[0])
    dec = zstd.ZstdDecompressor()
    cursor = 0
    for op in header["ops"]:
        kind = op[0]
        if kind == "L":
            n = int(op[1])
            if cursor + n > len(lit):
                raise DeltaError("delta: literal stream too short")
            yield lit[cursor : cursor + n]
            cursor += n
        elif kind == "R":
            off, n = int(op[1]), int(op[2])
            if off < 0 or off + n > len(base):
                raise DeltaError("delta: reference outside the base file")
            yield bytes(base[off : off + n])
        elif kind in ("N", "X"):
            idx, n, es = int(op[1]), int(op[2]), int(op[3])
            if not 0 < idx < len(blobs):
                raise DeltaError("delta: tensor blob index out of range")
            data = _unshuffle(dec.decompress(blobs[idx], max_output_size=n), es)
            if len(data) != n:
                raise DeltaError("delta: tensor blob has the wrong size")
            if kind == "X":
                off = int(op[4])
                if off < 0 or off + n > len(base):
                    raise DeltaError("delta: xor reference outside the base file")
                data = _xor(data, base[off : off + n])
            yield data
        else:
            raise DeltaError(f"delta: unknown operation {kind!r}")
