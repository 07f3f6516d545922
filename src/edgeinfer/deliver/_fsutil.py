"""Small file-system helpers for the device side: crash-safe writes and the crash hook.

Every file the agent must be able to trust after a power cut is written to a temporary
file in the same directory (name starting with ``.tmp-``), flushed, fsync-ed and moved
into place with ``os.replace``, as python-tuf's ``Updater._persist_metadata`` does.
Recovery deletes any ``.tmp-*`` left by a crash.

:func:`exclusive_lock` is the one-writer lock of the agent's state directory and of a
publisher's repository: ``flock``, which the kernel releases when its holder dies, so a
killed process never leaves a stale lock behind.

``crash_point(step)`` ends the process at once (``os._exit(137)``, as ``kill -9`` would)
when ``EDGEINFER_AGENT_CRASH_AT`` names ``step``: the tests use it to prove that a crash at
any step of an install leaves the device on exactly the old or exactly the new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgeinfer import _atomic

__all__ = [
    "CRASH_ENV",
    "TMP_PREFIX",
    "crash_point",
    "exclusive_lock",
    "read_json",
    "write_atomic",
    "write_json",
]

CRASH_ENV = "EDGEINFER_AGENT_CRASH_AT"
TMP_PREFIX = ".tmp-"


def crash_point(step: str) -> None:
    """Die like ``kill -9`` here if the crash hook names this step (tests only)."""
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)


def write_atomic(path: Path, data: bytes, *, crash_step: str | None = None) -> None:
    hook = None if crash_step is None else (lambda: crash_point(crash_step))
    _atomic.write_atomic(path, data, prefix=TMP_PREFIX, before_replace=hook)
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any, *, crash_step: str | None = None) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"), crash_step=crash_step)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: float, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (a directory, or a file created if missing).

    Waits up to ``wait`` seconds for another holder, then raises ``busy()``.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: one writer at a time is on the caller
        yield
        return
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        give_up = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise busy() from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
