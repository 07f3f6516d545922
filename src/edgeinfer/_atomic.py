"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

A crash (or ``kill -9``) leaves either the old file or the new one, never half of one, as
python-tuf's ``Updater._persist_metadata`` does it. Every part of edgeinfer that persists
something (bundles, keys, TUF metadata, caches, profiles) writes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "write_atomic"]


@contextmanager
def replacing(
    dest: Path, *, mode: int | None = 0o644, prefix: str = ".", suffix: str = ""
) -> Iterator[Path]:
    """A temporary path beside ``dest``, moved onto ``dest`` when the block succeeds.

    On an exception the temporary file is removed and ``dest`` is untouched. ``mode`` is
    applied before the move (``mkstemp`` creates owner-only files).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{prefix}{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(
    dest: Path,
    data: bytes,
    *,
    mode: int | None = 0o644,
    prefix: str = ".",
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write ``data`` to ``dest`` durably (fsync) and atomically."""
    with replacing(dest, mode=mode, prefix=prefix) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
