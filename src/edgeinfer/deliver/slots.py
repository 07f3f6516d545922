"""A/B slots on the device and the one pointer file that says which slot is live.

::

    STATE_DIR/
      active.json          {"active": {slot, name, version, sha256}, "state": "committed"
                            | "trial", "previous": {...} | null, "attempt": 1}
      slots/a/bundle/      the unpacked, verified bundle
             bundle.tar    the packed bundle exactly as published (the base for deltas)
             slot.json     what the slot holds
      slots/b/...

An update is unpacked into the *inactive* slot (``.staging-<slot>`` first, then moved into
place), so the live slot is never written. The switch is one ``os.replace`` of
``active.json``; the new slot starts in state ``trial``. While in trial the *committed*
bundle -- what servers and the hot-swap watcher use -- is still the previous one. The
health gate then commits (``state: committed``) or rolls back (the previous slot becomes
active again). A crash during the trial is found by :meth:`SlotStore.recover` at the next
start and rolled back, so a model that crashes the process cannot stay installed.

A crash and a write that failed (a full disk) leave the same ``trial`` pointer; only a crash
may count against the version. ``STATE_DIR/trial-running`` is written before the switch
and *deleted* before the commit or rollback is written -- deleting needs no free space, so
it works on a full disk, and frees a block for the pointer's write. A ``trial`` pointer
found with the marker is a trial cut short by a crash; without it, a commit or rollback
that could not be written, rolled back at the next start without a strike.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.bundle import Bundle
from edgeinfer.deliver._fsutil import TMP_PREFIX, crash_point, read_json, write_json
from edgeinfer.deliver.errors import UpdateRefused

__all__ = ["POINTER_FILE", "TRIAL_MARKER", "Pointer", "SlotInfo", "SlotStore"]

logger = logging.getLogger(__name__)

POINTER_FILE = "active.json"
TRIAL_MARKER = "trial-running"  # exists from the switch until the trial's end is written
SLOTS = ("a", "b")


@dataclass(frozen=True)
class SlotInfo:
    """What one slot holds."""

    slot: str
    name: str
    version: int
    sha256: str  # of the packed bundle as published

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SlotInfo | None:
        if not isinstance(data, dict) or data.get("slot") not in SLOTS:
            return None
        try:
            return cls(
                str(data["slot"]), str(data["name"]), int(data["version"]), str(data["sha256"])
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Pointer:
    """The content of ``active.json``."""

    active: SlotInfo | None = None
    state: str = "committed"  # or "trial": installed, switched to, health gate not passed yet
    previous: SlotInfo | None = None
    attempt: int = 0  # how many times this trial was started

    @property
    def committed(self) -> SlotInfo | None:
        """The bundle that passed its health gate: what should serve requests."""
        return self.previous if self.state == "trial" else self.active

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": None if self.active is None else self.active.to_dict(),
            "state": self.state,
            "previous": None if self.previous is None else self.previous.to_dict(),
            "attempt": self.attempt,
        }


class SlotStore:
    """The A/B slots and the pointer under a state directory."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self.slots_dir = self.root / "slots"
        self.pointer_path = self.root / POINTER_FILE
        self.marker_path = self.root / TRIAL_MARKER

    # ------------------------------------------------------------ reading
    def pointer(self) -> Pointer:
        data = read_json(self.pointer_path)
        if not isinstance(data, dict):
            return Pointer()
        state = data.get("state") if data.get("state") in ("committed", "trial") else "committed"
        attempt = data.get("attempt")
        return Pointer(
            SlotInfo.from_dict(data.get("active")),
            str(state),
            SlotInfo.from_dict(data.get("previous")),
            attempt if isinstance(attempt, int) else 0,
        )

    def committed(self) -> SlotInfo | None:
        return self.pointer().committed

    def slot_dir(self, slot: str) -> Path:
        return self.slots_dir / slot

    def bundle_dir(self, info: SlotInfo) -> Path:
        return self.slot_dir(info.slot) / "bundle"

    def packed(self, info: SlotInfo) -> Path:
        return self.slot_dir(info.slot) / "bundle.tar"

    def inactive_slot(self) -> str:
        current = self.committed()
        return "b" if current is not None and current.slot == "a" else "a"

    # ------------------------------------------------------------ changing
    def install(self, packed: Path, name: str, version: int, sha256: str) -> SlotInfo:
        """Unpack and verify ``packed`` into the inactive slot; ``packed`` moves into it."""
        slot = self.inactive_slot()
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        staging = self.slots_dir / f".staging-{slot}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            bundle = Bundle.unpack(packed, staging / "bundle")
            if (bundle.name, bundle.version) != (name, version):
                raise UpdateRefused(
                    f"bundle inside the target is {bundle.name} v{bundle.version}, but the "
                    f"signed metadata says {name} v{version}"
                )
            os.replace(packed, staging / "bundle.tar")
            info = SlotInfo(slot, name, version, sha256)
            write_json(staging / "slot.json", info.to_dict())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        crash_point("unpack")
        final = self.slot_dir(slot)
        if final.exists():
            old = self.slots_dir / f".old-{slot}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, final)
        return info

    def switch(self, info: SlotInfo, attempt: int) -> Pointer:
        """Make ``info`` the active slot, on trial until :meth:`commit`."""
        pointer = Pointer(info, "trial", self.committed(), attempt)
        write_json(self.marker_path, info.to_dict())
        try:
            write_json(self.pointer_path, pointer.to_dict(), crash_step="switch")
        except BaseException:
            self.marker_path.unlink(missing_ok=True)
            raise
        return pointer

    def commit(self) -> Pointer:
        """The trial passed: its bundle becomes the committed one.

        Raises ``OSError`` when the pointer cannot be written (a full disk); the trial then
        ends at the next :meth:`recover` without counting against the version.
        """
        self.marker_path.unlink(missing_ok=True)  # the gate passed: never a crash from here
        current = self.pointer()
        pointer = Pointer(current.active, "committed", current.previous, current.attempt)
        write_json(self.pointer_path, pointer.to_dict())
        return pointer

    def rollback(self) -> Pointer:
        """Back to the committed bundle of before the trial."""
        self.marker_path.unlink(missing_ok=True)
        pointer = Pointer(self.committed(), "committed", None, 0)
        write_json(self.pointer_path, pointer.to_dict())
        return pointer

    def recover(self) -> SlotInfo | None:
        """Clean what a crash left; roll back an unfinished trial.

        Returns the trial's slot when a crash cut it short (the marker is there), ``None``
        otherwise -- also when the trial only ended in a commit or rollback that could not
        be written, which is rolled back here as well.
        """
        if self.slots_dir.is_dir():
            for leftover in self.slots_dir.iterdir():
                if leftover.name.startswith((".staging-", ".old-")):
                    shutil.rmtree(leftover, ignore_errors=True)
        for d in (self.root, self.slots_dir):
            if d.is_dir():
                for tmp in d.glob(f"{TMP_PREFIX}*"):
                    tmp.unlink(missing_ok=True)
        pointer = self.pointer()
        crashed = self.marker_path.exists()
        if pointer.state == "trial":
            self.rollback()
            if crashed:
                return pointer.active
            if pointer.active is not None:
                logger.warning(
                    "rolled back %s v%d: its trial ended in a write that failed (not a crash)",
                    pointer.active.name,
                    pointer.active.version,
                )
        elif crashed:  # died between writing the marker and switching
            self.marker_path.unlink(missing_ok=True)
        return None
