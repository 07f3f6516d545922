"""Which update a device takes: a pure function of signed targets and device facts.

Kept free of I/O (as python-tuf keeps ``TrustedMetadataSet`` free of the network) so every
rule is tested directly. The newest bundle version wins among those that are

* of the device's model (or, on a fresh device without ``model``, the only model there);
* in the device's channel, with the device's rollout bucket below the rollout percentage
  (unless the fleet paces rollouts: then its signed document decides, within TUF's share);
* not older than the agent needs (``min_agent_version``), newer than what is installed,
  at or above the version floor, and not remembered as bad.

A delta is used when one leads from exactly the installed bundle (same sha256) to the
chosen version. edgeinfer targets whose names or fields do not validate (a ``..`` in the
name, a malformed field) are refused with a reason; targets of other tools are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgeinfer.deliver.targets import (
    BundleTarget,
    DeltaTarget,
    parse_target,
    parse_version,
    rollout_bucket,
)

__all__ = ["Choice", "Device", "choose"]


@dataclass(frozen=True)
class Device:
    device_id: str
    channel: str = "stable"
    model: str | None = None  # the model this device runs; None: the repository's only one
    installed_name: str | None = None
    installed_version: int | None = None
    installed_sha256: str | None = None
    version_floor: int = 0
    agent_version: str = "0.0.0"
    bad: frozenset[str] = frozenset()  # sha256 of versions that failed their health gate
    fleet_paced: bool = False  # rollout shares are the fleet's RolloutGate's to apply


@dataclass(frozen=True)
class Choice:
    full: BundleTarget | None  # None: nothing to do
    delta: DeltaTarget | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)  # why targets were passed over
    invalid: tuple[str, ...] = field(default_factory=tuple)  # edgeinfer targets refused outright
    problem: str | None = None  # set when the repository cannot serve this device at all


def choose(targets: Iterable[tuple[str, Any]], device: Device) -> Choice:
    """``targets``: (path, tuf ``TargetFile``) pairs from the verified targets metadata."""
    bundles: list[BundleTarget] = []
    deltas: list[DeltaTarget] = []
    invalid: list[str] = []
    for path, tf in targets:
        custom = tf.custom
        if not isinstance(custom, dict) or "edgeinfer" not in custom:
            continue  # not an edgeinfer target: none of our business
        try:
            parsed = parse_target(path, int(tf.length), tf.hashes, tf.custom)
        except ValueError as exc:
            invalid.append(str(exc))
            continue
        if isinstance(parsed, BundleTarget):
            bundles.append(parsed)
        else:
            deltas.append(parsed)
    model = device.model or device.installed_name
    if model is None:
        names = sorted({b.model for b in bundles})
        if len(names) > 1:
            return Choice(
                None,
                invalid=tuple(invalid),
                problem=f"the repository holds several models ({', '.join(names)}); "
                "tell the agent which one this device runs (--model)",
            )
        model = names[0] if names else None
    agent = parse_version(device.agent_version)
    floor = max(device.version_floor, (device.installed_version or 0) + 1)
    if device.installed_name is not None and device.installed_name != model:
        floor = device.version_floor  # switching to another model: any version is newer
    skipped: list[str] = []
    best: BundleTarget | None = None
    for b in bundles:
        if b.model != model or b.version < floor:
            continue
        why = None
        if device.channel not in b.channels:
            why = f"channel {device.channel!r} not in {list(b.channels)}"
        elif not device.fleet_paced and rollout_bucket(device.device_id, b.model) >= b.rollout:
            why = f"rollout {b.rollout:g}% does not reach this device yet"
        elif b.min_agent_version is not None and parse_version(b.min_agent_version) > agent:
            why = f"needs agent {b.min_agent_version}, this is {device.agent_version}"
        elif b.sha256 in device.bad:
            why = "failed its health gate on this device before"
        if why is not None:
            skipped.append(f"{b.path}: {why}")
        elif best is None or b.version > best.version:
            best = b
    if best is None:
        return Choice(None, skipped=tuple(skipped), invalid=tuple(invalid))
    delta = None
    if device.installed_sha256 is not None:
        for d in deltas:
            if (
                d.model == best.model
                and d.to_version == best.version
                and d.target_path == best.path
                and d.base_sha256 == device.installed_sha256
                and (delta is None or d.length < delta.length)
            ):
                delta = d
    return Choice(best, delta, tuple(skipped), tuple(invalid))
