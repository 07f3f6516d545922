"""What the agent remembers between cycles, and what it reports.

``STATE_DIR/status.json`` (rewritten after every cycle; POSTed to a report URL if set)::

    {"device_id": "...", "agent_version": "0.1.0", "updated_at": "2024-...Z",
     "active": {"name": "digits-cnn", "version": 2, "sha256": "...", "slot": "b",
                "bundle_path": "/state/slots/b/bundle"} | null,
     "last_cycle": {"result": "updated", "via": "delta", "bytes_downloaded": 5120,
                    "reason": null, "from_version": 1, "to_version": 2, "seconds": 1.9},
     "bad_versions": [{"name": ..., "version": 3, "sha256": ..., "reason": ...}]}

``result`` is one of ``updated``, ``up-to-date``, ``refused`` (remote data failed
verification, or the update does not fit), ``rolled-back`` (the health gate failed),
``failed`` (the network or the device failed; the next cycle tries again), ``held`` (the
fleet's signed rollout document does not let this device install the version yet).

``STATE_DIR/history.json`` keeps the versions that failed their health gate (never retried)
and how often a trial was cut short by a crash. ``STATE_DIR/device_id`` holds the stable id
that decides the device's rollout bucket.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeinfer.deliver._fsutil import read_json, write_atomic, write_json
from edgeinfer.deliver._transfer import describe_failure, disk_full, redact_url, split_userinfo

__all__ = [
    "RESULTS",
    "CycleResult",
    "History",
    "device_id",
    "report_status",
    "utc_now",
    "write_status",
]

logger = logging.getLogger(__name__)

RESULTS = ("updated", "up-to-date", "refused", "rolled-back", "failed", "held")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class CycleResult:
    """The outcome of one update cycle."""

    result: str  # one of RESULTS
    via: str | None = None  # "delta" or "full" when something was downloaded
    bytes_downloaded: int = 0  # bytes received over the network in this cycle
    reason: str | None = None  # why it refused, failed or rolled back
    from_version: int | None = None
    to_version: int | None = None
    seconds: float = 0.0  # wall-clock duration of the cycle
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Write ``status.json``; on a full disk make room by dropping the old one first.

    Never raises: a missing ``status.json`` is better than one describing an older cycle,
    and the agent goes on (the report still carries the status).
    """
    try:
        write_json(path, status)
        return
    except OSError as exc:
        if disk_full(exc) is None:
            logger.error("cannot write %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return
    # the old status is about as big as the new one: its blocks make room
    try:
        path.unlink(missing_ok=True)
        write_json(path, status)
    except OSError as exc:
        logger.error("cannot write %s (%s); the disk is full", path, exc.strerror)


def report_status(url: str, status: dict[str, Any], timeout: float) -> None:
    """POST ``status`` to ``url`` (its credentials, if any, as basic auth); never raises."""
    import httpx

    bare, auth = split_userinfo(url)
    try:
        httpx.post(bare, json=status, timeout=timeout, auth=auth)
    except httpx.HTTPError as exc:
        logger.warning("could not report status to %s: %s", redact_url(url), describe_failure(exc))


def device_id(state_dir: Path, given: str | None = None) -> str:
    """The stable device id: ``given`` (remembered), else the stored one, else a new UUID."""
    path = state_dir / "device_id"
    if given:
        if not (path.is_file() and path.read_text(encoding="utf-8").strip() == given):
            write_atomic(path, (given + "\n").encode("utf-8"))
        return given
    if path.is_file():
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored
    new = uuid.uuid4().hex
    write_atomic(path, (new + "\n").encode("utf-8"))
    return new


class History:
    """Versions that failed their gate, and trial crash counts (``history.json``)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "history.json"
        data = read_json(self.path)
        data = data if isinstance(data, dict) else {}
        bad = data.get("bad")
        strikes = data.get("strikes")
        self.bad: dict[str, dict[str, Any]] = bad if isinstance(bad, dict) else {}
        self.strikes: dict[str, int] = strikes if isinstance(strikes, dict) else {}

    def is_bad(self, sha256: str) -> bool:
        return sha256 in self.bad

    def mark_bad(self, sha256: str, name: str, version: int, reason: str) -> None:
        self.bad[sha256] = {"name": name, "version": version, "reason": reason, "at": utc_now()}
        self.strikes.pop(sha256, None)
        self._save()

    def strike(self, sha256: str) -> int:
        self.strikes[sha256] = self.strikes.get(sha256, 0) + 1
        self._save()
        return self.strikes[sha256]

    def clear_strikes(self, sha256: str) -> None:
        if self.strikes.pop(sha256, None) is not None:
            self._save()

    def bad_list(self) -> list[dict[str, Any]]:
        return [{"sha256": k, **v} for k, v in sorted(self.bad.items())]

    def _save(self) -> None:
        write_json(self.path, {"bad": self.bad, "strikes": self.strikes})
