"""Deltas between two packed bundles: ship only what changed.

Two methods; :func:`make_delta` computes each that applies and keeps the smaller:

``tensor``
    ONNX-aware (:mod:`edgeinfer.deliver._tensor_delta`). Tensors are matched to the base
    by name, then by content: an unchanged tensor is a reference into the base, a changed
    one is shipped zstd-compressed (byte-shuffled, XOR-ed with the base tensor when that
    compresses better); the graph and other literal bytes are compressed against the
    base's as a dictionary, so an unchanged graph costs almost nothing.
``bsdiff``
    Generic: bsdiff4's control/diff/extra blocks, each zstd-compressed. Works on any file;
    slow to compute on large ones (skipped above ``DeltaConfig.bsdiff_max_bytes``).

A delta file names its exact base (sha256 and length) and the exact result. Applying
checks the base first and the result last and raises :class:`DeltaError` on any
mismatch; the device then falls back to the full bundle. Layout
(:mod:`edgeinfer.deliver._delta_file`)::

    b"EIDELTA1" | u64 header length | zstd(JSON header) | blob 0 | blob 1 | ...

>>> info = make_delta("digits-1.tar", "digits-2.tar", "1-2.delta")    # doctest: +SKIP
>>> apply_delta("digits-1.tar", "1-2.delta", "digits-2.tar")          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.deliver._delta_file import (
    FORMAT,
    load_zstd,
    mapped,
    read_delta,
    read_header,
    write_delta,
)
from edgeinfer.deliver._tensor_delta import apply_tensor, tensor_delta
from edgeinfer.deliver.errors import DeltaError

__all__ = ["METHODS", "DeltaConfig", "DeltaInfo", "apply_delta", "make_delta", "read_header"]

METHODS = ("tensor", "bsdiff")


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


# ---------------------------------------------------------------- bsdiff method
def _bsdiff_delta(base: memoryview, target: memoryview, cfg: DeltaConfig) -> list[bytes]:
    import bsdiff4.core  # type: ignore[import-untyped]

    control, diff, extra = bsdiff4.core.diff(bytes(base), bytes(target))
    c = load_zstd().ZstdCompressor(level=cfg.level)
    return [c.compress(control), c.compress(diff), c.compress(extra)]


def _apply_bsdiff(header: dict[str, Any], base: memoryview, blobs: list[bytes]) -> Iterator[bytes]:
    import bsdiff4.core  # type: ignore[import-untyped]

    if len(blobs) != 3:
        raise DeltaError("delta: a bsdiff delta has three blocks")
    dec = load_zstd().ZstdDecompressor()
    control, diff, extra = (dec.decompress(b) for b in blobs)
    yield bsdiff4.core.patch(bytes(base), int(header["target"]["length"]), control, diff, extra)


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
    with mapped(base_p) as b, mapped(target_p) as t:
        common: dict[str, Any] = {
            "format": FORMAT,
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
                extra, blobs, stats = tensor_delta(
                    base_p,
                    b,
                    target_p,
                    t,
                    level=cfg.level,
                    literal_level=cfg.literal_level,
                    min_tensor_bytes=cfg.min_tensor_bytes,
                )
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
    written = write_delta(out_p, header, blobs)
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
    header, blobs = read_delta(Path(delta))
    want_base, want = header.get("base") or {}, header.get("target") or {}
    if not blobs:
        raise DeltaError(f"{delta}: delta has no data blocks")
    out_p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_p.name}.", dir=out_p.parent)
    try:
        with mapped(base_p) as b, os.fdopen(fd, "wb") as f:
            if len(b) != want_base.get("length") or _sha(b) != want_base.get("sha256"):
                raise DeltaError(
                    f"{delta}: made for base {str(want_base.get('sha256'))[:12]}..., but "
                    f"{base_p.name} is {_sha(b)[:12]}...; this delta does not apply to it"
                )
            method = header.get("method")
            if method == "tensor":
                chunks = apply_tensor(header, b, blobs)
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
