"""Small file-system helpers for the device side: crash-safe writes and the crash hook.

Every file the agent must be able to trust after a power cut is written to a temporary
file in the same directory (name starting with ``.tmp-``), flushed, fsync-ed and moved
into place with ``os.replace``, as python-tuf's ``Updater._persist_metadata`` does.
Recovery deletes any ``.tmp-*`` left by a crash.

``crash_point(step)`` ends the process at once (``os._exit(137)``, as ``kill -9`` would)
when ``EDGEINFER_AGENT_CRASH_AT`` names ``step``: the tests use it to prove that a crash at
any step of an install leaves the device on exactly the old or exactly the new version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgeinfer import _atomic

__all__ = ["CRASH_ENV", "TMP_PREFIX", "crash_point", "read_json", "write_atomic", "write_json"]

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
