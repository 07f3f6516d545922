"""Publishing model bundles into the TUF repository, with deltas from earlier versions.

:class:`Publisher` adds a bundle (directory or packed ``.tar``) as a target of the
repository kept by :class:`~edgeinfer.deliver.repository.TufRepository` (layout, keys,
re-signing, the one-publish-at-a-time lock): the packed bundle under
``targets/models/<name>/``, deltas from the previous versions of the same model under
``targets/deltas/<name>/`` (:mod:`edgeinfer.deliver.delta`; one larger than
``max_delta_ratio`` of the full bundle is dropped), then new targets, snapshot and timestamp
metadata. The target's ``custom`` field carries what the agent selects by: channels,
rollout, minimum agent version, format and unpacked size.

Publishing a bundle that is already published with the same settings writes nothing
(``PublishResult.changed`` is false); a version older than the model's latest is refused
unless asked for (``allow_older``), since devices never move back to it on their own.

>>> pub = Publisher("repo", "keys")                                       # doctest: +SKIP
>>> pub.publish("bundles/digits", channel="stable", rollout=10.0)        # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import (  # type: ignore[attr-defined]
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from edgeinfer.bundle import MANIFEST_FILE, Bundle
from edgeinfer.deliver.delta import DeltaConfig, make_delta
from edgeinfer.deliver.errors import PublishError
from edgeinfer.deliver.keys import KeyStore
from edgeinfer.deliver.repository import STAGING_PREFIX, TufRepository
from edgeinfer.deliver.targets import BundleTarget, bundle_path, delta_path, parse_target

__all__ = ["STAGING_PREFIX", "PublishConfig", "PublishResult", "PublishedDelta", "Publisher"]


@dataclass(frozen=True)
class PublishConfig:
    root_expiry: float = 365.0  # days
    targets_expiry: float = 90.0  # days
    snapshot_expiry: float = 7.0  # days
    timestamp_expiry: float = 1.0  # days; re-sign with `publish --refresh` before it runs out
    delta_from: int = 3  # deltas from this many previous versions of the same model
    max_delta_ratio: float = 0.8  # drop a delta larger than this fraction of the full bundle
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    lock_timeout: float = 60.0  # seconds to wait while another publish holds the repository


@dataclass(frozen=True)
class PublishedDelta:
    path: str
    from_version: int
    size: int  # bytes
    method: str
    seconds: float  # time to compute


@dataclass(frozen=True)
class PublishResult:
    path: str  # target path of the bundle
    model: str
    version: int
    sha256: str
    length: int  # bytes
    channels: tuple[str, ...]
    rollout: float  # percent
    deltas: tuple[PublishedDelta, ...]
    targets_version: int  # version of the targets metadata now live
    created: bool  # False when only the rollout fields of an existing target changed
    changed: bool = True  # False when it was already published exactly so: nothing written


class Publisher(TufRepository):
    """Create and update a TUF repository of bundles in ``repo_dir``."""

    def __init__(
        self,
        repo_dir: str | os.PathLike[str],
        keys: KeyStore | str | os.PathLike[str],
        config: PublishConfig | None = None,
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or PublishConfig()
        c = self.config
        expiry = {
            Root.type: c.root_expiry,
            Targets.type: c.targets_expiry,
            Snapshot.type: c.snapshot_expiry,
            Timestamp.type: c.timestamp_expiry,
        }
        super().__init__(repo_dir, keys, expiry, lock_timeout=c.lock_timeout, now=now)

    def bundles(self) -> list[BundleTarget]:
        """The bundle targets in the current targets metadata, oldest version first."""
        out = []
        for path, tf in self.targets().targets.items():
            try:
                parsed = parse_target(path, tf.length, tf.hashes, tf.custom)
            except ValueError:
                continue
            if isinstance(parsed, BundleTarget):
                out.append(parsed)
        return sorted(out, key=lambda t: (t.model, t.version))

    def publish(
        self,
        bundle: str | os.PathLike[str],
        *,
        channel: str = "stable",
        rollout: float = 100.0,
        min_agent_version: str | None = None,
        allow_older: bool = False,
    ) -> PublishResult:
        """Add a bundle (directory or packed ``.tar``) as a target, with deltas from the
        previous versions. Publishing an already published version again only changes its
        channels, rollout and minimum agent version (same bytes required); with nothing to
        change it writes nothing. A version older than the model's latest needs
        ``allow_older``."""
        if not 0.0 <= rollout <= 100.0:
            raise PublishError(f"rollout {rollout}% is not within 0..100")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", channel):
            raise PublishError(f"channel {channel!r}: use letters, digits, '.', '_' or '-'")
        if min_agent_version is not None:
            from edgeinfer.deliver.targets import parse_version

            try:
                parse_version(min_agent_version)
            except ValueError as exc:
                raise PublishError(f"--min-agent-version: {exc}") from None
        b = Bundle.open(bundle)
        if b.bare:
            raise PublishError(
                f"{bundle}: a bare model file; make a bundle first (edgeinfer bundle create)"
            )
        with self.locked():
            self._ready()
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.targets_dir))
            try:
                return self._publish(
                    b, staging, channel, float(rollout), min_agent_version, allow_older
                )
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------ internals
    def _publish(
        self,
        b: Bundle,
        staging: Path,
        channel: str,
        rollout: float,
        min_agent: str | None,
        allow_older: bool,
    ) -> PublishResult:
        packed = b.pack(staging / "bundle.tar")
        full = TargetFile.from_file(bundle_path(b.name, b.version), str(packed), ["sha256"])
        sha = full.hashes["sha256"]
        current = self.targets().targets
        existing = current.get(full.path)
        channels = [channel]
        created = existing is None
        new_files: dict[str, TargetFile] = {}
        deltas: list[PublishedDelta] = []
        if existing is not None:
            if existing.hashes.get("sha256") != sha:
                raise PublishError(
                    f"{b.name} version {b.version} is already published with different "
                    "content; give the new bundle a higher version"
                )
            old_fields = (existing.custom or {}).get("edgeinfer", {})
            channels = sorted({*old_fields.get("channels", []), channel})
        full.unrecognized_fields["custom"] = self._fields(b, channels, rollout, min_agent)
        if existing is not None and existing.custom == full.custom:
            return self._result(full, b, rollout, (), created=False, changed=False)
        latest = max((t.version for t in self.bundles() if t.model == b.name), default=None)
        if latest is not None and b.version < latest and not allow_older:
            raise PublishError(
                f"{b.name} version {b.version} is older than version {latest}, the latest "
                "published; devices never move back to it (pass --allow-older to publish "
                "it anyway)"
            )
        if existing is None:
            shutil.move(packed, self._file_for(full))
            deltas = self._make_deltas(b, full, current, staging, new_files)
        with self.edit_targets() as targets:
            targets.targets[full.path] = full
            targets.targets.update(new_files)
        self.do_snapshot()
        self.do_timestamp()
        return self._result(full, b, rollout, tuple(deltas), created=created, changed=True)

    def _result(
        self,
        full: TargetFile,
        b: Bundle,
        rollout: float,
        deltas: tuple[PublishedDelta, ...],
        *,
        created: bool,
        changed: bool,
    ) -> PublishResult:
        fields = full.custom["edgeinfer"]
        return PublishResult(
            full.path,
            b.name,
            b.version,
            full.hashes["sha256"],
            full.length,
            tuple(fields["channels"]),
            rollout,
            deltas,
            self.targets().version,
            created,
            changed,
        )

    @staticmethod
    def _fields(
        b: Bundle, channels: list[str], rollout: float, min_agent: str | None
    ) -> dict[str, Any]:
        """The bundle target's ``custom`` field."""
        files = [r for r in (b.manifest.model, b.manifest.golden, *b.manifest.files) if r]
        unpacked = sum(r.size for r in files) + (b.path / MANIFEST_FILE).stat().st_size
        return {
            "edgeinfer": {
                "kind": "bundle",
                "model": b.name,
                "version": b.version,
                "channels": channels,
                "rollout_bp": round(rollout * 100),
                "min_agent_version": min_agent,
                "format": b.manifest.format,
                "unpacked_bytes": unpacked,
            }
        }

    def _make_deltas(
        self,
        b: Bundle,
        full: TargetFile,
        current: dict[str, TargetFile],
        staging: Path,
        out: dict[str, TargetFile],
    ) -> list[PublishedDelta]:
        previous = sorted(
            (t for t in self.bundles() if t.model == b.name and t.version < b.version),
            key=lambda t: t.version,
            reverse=True,
        )[: max(0, self.config.delta_from)]
        made = []
        new_file = self._file_for(full)
        for base in previous:
            base_file = self._file_for(current[base.path])
            if not base_file.is_file():
                continue
            tmp = staging / f"{base.version}.delta"
            info = make_delta(base_file, new_file, tmp, self.config.delta)
            if info.size > self.config.max_delta_ratio * full.length:
                continue
            tf = TargetFile.from_file(delta_path(b.name, base.version, b.version), str(tmp))
            tf.unrecognized_fields["custom"] = {
                "edgeinfer": {
                    "kind": "delta",
                    "model": b.name,
                    "from_version": base.version,
                    "to_version": b.version,
                    "base_sha256": base.sha256,
                    "base_length": base.length,
                    "target_path": full.path,
                    "method": info.method,
                }
            }
            shutil.move(tmp, self._file_for(tf))
            out[tf.path] = tf
            made.append(PublishedDelta(tf.path, base.version, info.size, info.method, info.seconds))
        return made

    def _file_for(self, tf: TargetFile) -> Path:
        """Where a target lives on disk (hash-prefixed name: consistent snapshots)."""
        parent, _, name = tf.path.rpartition("/")
        path = self.targets_dir / parent / f"{tf.hashes['sha256']}.{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
