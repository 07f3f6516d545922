"""Deltas between two packed bundles: ship only what changed.

Two methods; :func:`make_delta` computes each that applies and keeps the smaller:

``tensor``
    ONNX-aware. The target file is cut into the ``raw_data`` of its tensors and the
    literal bytes around them (graph, tar headers, manifest, golden sample; see
    :mod:`edgeinfer.deliver._onnx_wire`). Tensors are matched to the base **by name**
    (then by content): an unchanged tensor is a reference into the base, a changed one
    is shipped zstd-compressed -- byte-shuffled by element size, and XOR-ed with the
    base tensor when that compresses better (a fine-tune flips mostly low mantissa
    bits). The literal bytes are shipped as one zstd stream compressed against the
    base's literal bytes as a dictionary, so an unchanged graph costs almost nothing.
``bsdiff``
    Generic: bsdiff4's control/diff/extra blocks, each zstd-compressed. Works on any file;
    slow to compute on large ones (skipped above ``DeltaConfig.bsdiff_max_bytes``).

A delta file names its exact base (sha256 and length) and the exact result. Applying
checks the base first and the result last and raises :class:`DeltaError` on any
mismatch; the device then falls back to the full bundle. Layout::

    b"EIDELTA1" | u64 header length | zstd(JSON header) | blob 0 | blob 1 | ...

>>> info = make_delta("digits-1.tar", "digits-2.tar", "1-2.delta")    # doctest: +SKIP
>>> apply_delta("digits-1.tar", "1-2.delta", "digits-2.tar")          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.deliver._onnx_wire import ELEMENT_SIZE, TensorSpan, tensor_spans
from edgeinfer.deliver.errors import DeltaError

__all__ = ["METHODS", "DeltaConfig", "DeltaInfo", "apply_delta", "make_delta", "read_header"]

MAGIC = b"EIDELTA1"
METHODS = ("tensor", "bsdiff")
_FORMAT = 1
_MAX_HEADER = 64 << 20  # bytes
_SAMPLE = 1 << 20  # bytes of a changed tensor used to choose between plain and XOR


@dataclass(frozen=True)
class DeltaConfig:
    methods: tuple[str, ...] = METHODS  # computed in turn; the smallest result is kept
    level: int = 9  # zstd level for changed tensors and bsdiff blocks
    literal_level: int = 19  # zstd level for the (small) literal stream
    bsdiff_max_bytes: int = 64 << 20  # bytes: skip bsdiff when base + target exceed this
    min_tensor_bytes: int = 64  # bytes: smaller tensors travel with the literal bytes


@dataclass(frozen=True)
class DeltaInfo:
    method: str
    size: int  # bytes of the delta file
    base_sha256: str
    base_length: int  # bytes
    target_sha256: str
    target_length: int  # bytes
    seconds: float  # time to compute the winning delta
    stats: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)  # method -> size in bytes


@contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                yield view
            finally:
                view.release()


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        from edgeinfer.errors import MissingDependencyError

        raise MissingDependencyError("zstandard", "deliver", "Model deltas") from exc
    return zstandard


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


# ---------------------------------------------------------------- tensor method
def _tensor_delta(
    base_path: Path, base: memoryview, target_path: Path, target: memoryview, cfg: DeltaConfig
) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
    zstd = _zstd()
    b_spans = tensor_spans(base_path, base, cfg.min_tensor_bytes)
    t_spans = tensor_spans(target_path, target, cfg.min_tensor_bytes)
    by_name = {s.name: s for s in b_spans}
    by_content: dict[tuple[int, bytes], TensorSpan] = {}
    for s in b_spans:
        key = (s.length, hashlib.blake2b(base[s.offset : s.offset + s.length]).digest())
        by_content.setdefault(key, s)
    b_lits = _literal_spans(len(base), b_spans)
    dict_bytes = b"".join(bytes(base[o : o + n]) for o, n in b_lits)
    compressor = zstd.ZstdCompressor(level=cfg.level)
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
    lit_c = zstd.ZstdCompressor(level=cfg.literal_level, dict_data=_dict(zstd, dict_bytes))
    blobs[0] = lit_c.compress(lit)
    stats["literal_bytes"] = len(lit)
    stats["literal_compressed"] = len(blobs[0])
    return {"ops": ops, "dict": [list(x) for x in b_lits]}, blobs, stats


def _apply_tensor(header: dict[str, Any], base: memoryview, blobs: list[bytes]) -> Iterator[bytes]:
    zstd = _zstd()
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


# ---------------------------------------------------------------- bsdiff method
def _bsdiff_delta(base: memoryview, target: memoryview, cfg: DeltaConfig) -> list[bytes]:
    import bsdiff4.core  # type: ignore[import-untyped]

    control, diff, extra = bsdiff4.core.diff(bytes(base), bytes(target))
    c = _zstd().ZstdCompressor(level=cfg.level)
    return [c.compress(control), c.compress(diff), c.compress(extra)]


def _apply_bsdiff(header: dict[str, Any], base: memoryview, blobs: list[bytes]) -> Iterator[bytes]:
    import bsdiff4.core  # type: ignore[import-untyped]

    if len(blobs) != 3:
        raise DeltaError("delta: a bsdiff delta has three blocks")
    dec = _zstd().ZstdDecompressor()
    control, diff, extra = (dec.decompress(b) for b in blobs)
    yield bsdiff4.core.patch(bytes(base), int(header["target"]["length"]), control, diff, extra)


# ---------------------------------------------------------------- files
def _write_delta(out: Path, header: dict[str, Any], blobs: list[bytes]) -> int:
    zstd = _zstd()
    header = {**header, "blobs": [len(b) for b in blobs]}
    head = zstd.ZstdCompressor(level=19).compress(json.dumps(header).encode())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for b in blobs:
                f.write(b)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out.stat().st_size


def _read(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    zstd = _zstd()
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise DeltaError(f"{path}: not an edgeinfer delta (bad magic)")
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                raise DeltaError(f"{path}: delta header of {size} bytes is implausible")
            header = json.loads(zstd.ZstdDecompressor().decompress(f.read(size)))
            if header.get("format") != _FORMAT:
                raise DeltaError(f"{path}: unsupported delta format {header.get('format')!r}")
            blobs = [f.read(int(n)) for n in header["blobs"]]
            sizes = [int(n) for n in header["blobs"]]
            if [len(b) for b in blobs] != sizes or f.read(1):
                raise DeltaError(f"{path}: delta is truncated or has trailing bytes")
    except DeltaError:
        raise
    except (OSError, ValueError, KeyError, TypeError, struct.error, zstd.ZstdError) as exc:
        raise DeltaError(f"{path}: unreadable delta ({exc})") from None
    return header, blobs


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The delta's header: ``method``, ``base`` and ``target`` (each sha256 + length)."""
    return _read(Path(path))[0]


def _sha(view: memoryview) -> str:
    return hashlib.sha256(view).hexdigest()


def make_delta(
    base: str | os.PathLike[str],
    target: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: DeltaConfig | None = None,
) -> DeltaInfo:
    """Write the smallest delta from ``base`` to ``target`` into ``out``."""
    import time

    cfg = config or DeltaConfig()
    unknown = set(cfg.methods) - set(METHODS)
    if unknown or not cfg.methods:
        raise DeltaError(f"delta methods {sorted(unknown)} unknown; expected some of {METHODS}")
    base_p, target_p, out_p = Path(base), Path(target), Path(out)
    with _mapped(base_p) as b, _mapped(target_p) as t:
        common: dict[str, Any] = {
            "format": _FORMAT,
            "base": {"sha256": _sha(b), "length": len(b)},
            "target": {"sha256": _sha(t), "length": len(t)},
        }
        best: tuple[int, dict[str, Any], list[bytes], dict[str, Any], float] | None = None
        sizes: dict[str, int] = {}
        for method in cfg.methods:
            if method == "bsdiff" and len(b) + len(t) > cfg.bsdiff_max_bytes:
                continue
            start = time.perf_counter()
            if method == "tensor":
                extra, blobs, stats = _tensor_delta(base_p, b, target_p, t, cfg)
            else:
                extra, blobs, stats = {}, _bsdiff_delta(b, t, cfg), {}
            seconds = time.perf_counter() - start
            size = sum(len(x) for x in blobs)
            sizes[method] = size
            if best is None or size < best[0]:
                best = (size, {**common, "method": method, **extra}, blobs, stats, seconds)
    if best is None:
        raise DeltaError(
            f"no delta method applies to {target_p.name}: files exceed bsdiff_max_bytes and "
            "the tensor method is disabled"
        )
    _, header, blobs, stats, seconds = best
    written = _write_delta(out_p, header, blobs)
    return DeltaInfo(
        header["method"],
        written,
        common["base"]["sha256"],
        common["base"]["length"],
        common["target"]["sha256"],
        common["target"]["length"],
        seconds,
        stats,
        sizes,
    )


def apply_delta(
    base: str | os.PathLike[str], delta: str | os.PathLike[str], out: str | os.PathLike[str]
) -> Path:
    """Rebuild the target from ``base`` and ``delta`` into ``out`` (verified, atomic)."""
    base_p, out_p = Path(base), Path(out)
    header, blobs = _read(Path(delta))
    want_base, want = header.get("base") or {}, header.get("target") or {}
    if not blobs:
        raise DeltaError(f"{delta}: delta has no data blocks")
    out_p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_p.name}.", dir=out_p.parent)
    try:
        with _mapped(base_p) as b, os.fdopen(fd, "wb") as f:
            if len(b) != want_base.get("length") or _sha(b) != want_base.get("sha256"):
                raise DeltaError(
                    f"{delta}: made for base {str(want_base.get('sha256'))[:12]}..., but "
                    f"{base_p.name} is {_sha(b)[:12]}...; this delta does not apply to it"
                )
            method = header.get("method")
            if method == "tensor":
                chunks = _apply_tensor(header, b, blobs)
            elif method == "bsdiff":
                chunks = _apply_bsdiff(header, b, blobs)
            else:
                raise DeltaError(f"{delta}: unknown delta method {method!r}")
            h, n = hashlib.sha256(), 0
            try:
                for chunk in chunks:
                    h.update(chunk)
                    n += len(chunk)
                    f.write(chunk)
            except DeltaError:
                raise
            except Exception as exc:  # zstd or bsdiff rejecting corrupt blocks
                raise DeltaError(f"{delta}: corrupt delta ({type(exc).__name__}: {exc})") from None
            f.flush()
            os.fsync(f.fileno())
        if n != want.get("length") or h.hexdigest() != want.get("sha256"):
            raise DeltaError(
                f"{delta}: the rebuilt file ({n} bytes, sha256 {h.hexdigest()[:12]}...) does "
                f"not match the delta's target ({want.get('length')} bytes, "
                f"{str(want.get('sha256'))[:12]}...)"
            )
        os.replace(tmp, out_p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_p
