"""The delta file format: ``b"EIDELTA1" | u64 header length | zstd(JSON header) | blobs``.

The header (JSON, zstd-compressed) names the method, the exact base and target (sha256 and
length each), the format version and the length of every blob that follows; a method's own
fields ride along in it. Reading refuses a bad magic, an implausibly large header, an
unknown format, and a file truncated or with trailing bytes, each as a
:class:`~edgeinfer.deliver.errors.DeltaError` naming the file. Writing is atomic (a temporary
file in the same directory, then ``os.replace``). What the blobs mean is the methods'
business: :mod:`edgeinfer.deliver._tensor_delta` and the bsdiff blocks in
:mod:`edgeinfer.deliver.delta`.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeinfer.deliver.errors import DeltaError

__all__ = ["FORMAT", "MAGIC", "load_zstd", "mapped", "read_delta", "read_header", "write_delta"]

MAGIC = b"EIDELTA1"
FORMAT = 1
_MAX_HEADER = 64 << 20  # bytes


@contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    """The file's bytes without reading them all in (an empty file, which mmap refuses,
    as empty bytes)."""
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


def load_zstd() -> Any:
    """``zstandard``, imported when a delta is made or read (the ``deliver`` extra)."""
    try:
        import zstandard
    except ImportError as exc:
        from edgeinfer.errors import MissingDependencyError

        raise MissingDependencyError("zstandard", "deliver", "Model deltas") from exc
    return zstandard


def write_delta(out: Path, header: dict[str, Any], blobs: list[bytes]) -> int:
    zstd = load_zstd()
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


def read_delta(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    zstd = load_zstd()
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise DeltaError(f"{path}: not an edgeinfer delta (bad magic)")
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                raise DeltaError(f"{path}: delta header of {size} bytes is implausible")
            header = json.loads(zstd.ZstdDecompressor().decompress(f.read(size)))
            if header.get("format") != FORMAT:
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
    return read_delta(Path(path))[0]
