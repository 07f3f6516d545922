"""TUF metadata on disk: python-tuf's ``Repository`` contract over a directory of files.

:class:`MetadataStore` implements ``open`` and ``close`` of python-tuf's
``tuf.repository.Repository`` (whose ``edit_*``, ``do_snapshot`` and ``do_timestamp`` do the
rest), as the python-tuf repository examples do, for a repository that is a plain
directory: ``metadata/N.root.json``, ``N.targets.json``, ``N.snapshot.json`` (consistent
snapshots) and ``timestamp.json``. ``close`` bumps the version, sets the expiry, signs with
the key store's keys -- a new root with the previous root's keys too -- checks that the
signatures meet root's threshold, and writes atomically. Snapshot and timestamp record the
length and sha256 of the metadata they name.

A publish killed half-way leaves files no device can reach: a half-written
``metadata/.N.role.json.*``, or a targets or snapshot version newer than the one the
timestamp leads to. :meth:`MetadataStore.remove_unreachable` removes them (under the
publisher's lock), so "the newest version on disk" is again the live one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository  # type: ignore[attr-defined]

from edgeinfer._atomic import write_atomic
from edgeinfer.deliver._fsutil import crash_point
from edgeinfer.deliver.errors import PublishError
from edgeinfer.deliver.keys import KeyStore

__all__ = ["MetadataStore"]

_SERIALIZER = JSONSerializer(compact=False)


class MetadataStore(Repository):  # type: ignore[misc]
    """Signed TUF metadata in ``repo/metadata``, signed with a :class:`KeyStore`."""

    def __init__(
        self,
        repo: Path,
        keys: KeyStore,
        expiry: Mapping[str, float],  # role -> days until the metadata expires
        now: Callable[[], datetime],
    ) -> None:
        self.repo = repo
        self.keys = keys
        self.expiry = dict(expiry)
        self._now = now
        self.metadata_dir = repo / "metadata"

    @property
    def exists(self) -> bool:
        return (self.metadata_dir / "timestamp.json").is_file()

    def open(self, role: str) -> Metadata[Any]:
        path = self._current_path(role)
        if path is None or not path.is_file():
            md: Metadata[Any] = Metadata(_new_signed(role, self._now()))
            md.signed.version = 0  # close() bumps it to 1
            return md
        return Metadata.from_file(str(path))

    def close(self, role: str, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = self._now() + timedelta(days=self.expiry[role])
        md.signatures.clear()
        previous_root = self.open(Root.type) if role == Root.type else None
        if previous_root is not None and previous_root.signed.version > 0:
            old_ids = set(previous_root.signed.roles[Root.type].keyids)
            new_ids = set(md.signed.roles[Root.type].keyids)
            signers = [
                s
                for s in self.keys.signers(Root.type, retired=True)
                if s.public_key.keyid in old_ids | new_ids
            ]
        else:
            signers = self.keys.signers(role)
        for signer in signers:
            md.sign(signer, append=True)
        self._check_threshold(role, md, previous_root)
        data = md.to_bytes(_SERIALIZER)
        version = md.signed.version
        if role == Timestamp.type:
            _write_atomic(self.metadata_dir / "timestamp.json", data, role)
        else:
            _write_atomic(self.metadata_dir / f"{version}.{role}.json", data, role)
        if role == Root.type:
            _write_atomic(self.metadata_dir / "root.json", data, role)

    def remove_unreachable(self) -> list[Path]:
        """Delete what a killed publish left in ``metadata/`` that no device can reach.

        Half-written temporary files, and targets or snapshot versions newer than the ones
        the timestamp leads to. Root versions are never touched: a device fetches
        ``N.root.json`` directly, so a written root is live. Call only under the lock.
        """
        if not self.metadata_dir.is_dir():
            return []
        gone = [p for p in self.metadata_dir.glob(".*.json.*") if p.is_file()]
        try:
            timestamp = Metadata[Timestamp].from_file(str(self.metadata_dir / "timestamp.json"))
            live = {Snapshot.type: timestamp.signed.snapshot_meta.version}
            path = self.metadata_dir / f"{live[Snapshot.type]}.snapshot.json"
            snapshot = Metadata[Snapshot].from_file(str(path))
            live[Targets.type] = snapshot.signed.meta["targets.json"].version
        except Exception:  # no timestamp yet, or unreadable: leave the versions alone
            live = {}
        for role, version in live.items():
            pattern = re.compile(rf"^([0-9]+)\.{role}\.json$")
            for p in self.metadata_dir.glob(f"*.{role}.json"):
                if (m := pattern.match(p.name)) and int(m[1]) > version:
                    gone.append(p)
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": self._metafile(Targets.type)}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._metafile(Snapshot.type)

    def _current_path(self, role: str) -> Path | None:
        """The newest version of a role's metadata on disk (written in publishing order)."""
        if role == Timestamp.type:
            return self.metadata_dir / "timestamp.json"
        pattern = re.compile(rf"^([0-9]+)\.{re.escape(role)}\.json$")
        versions = [
            int(m[1])
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if (m := pattern.match(p.name))
        ]
        return self.metadata_dir / f"{max(versions)}.{role}.json" if versions else None

    def _metafile(self, role: str) -> MetaFile:
        path = self._current_path(role)
        if path is None or not path.is_file():
            raise PublishError(f"{self.repo}: {role} metadata is missing")
        data = path.read_bytes()
        version = Metadata.from_bytes(data).signed.version
        return MetaFile.from_data(version, data, ["sha256"])

    def _check_threshold(
        self, role: str, md: Metadata[Any], previous_root: Metadata[Any] | None
    ) -> None:
        try:
            payload, sigs = md.signed_bytes, md.signatures
            if role == Root.type:
                md.signed.verify_delegate(Root.type, payload, sigs)
                if previous_root is not None and previous_root.signed.version > 0:
                    previous_root.signed.verify_delegate(Root.type, payload, sigs)
            else:
                self.root().verify_delegate(role, payload, sigs)
        except UnsignedMetadataError as exc:
            raise PublishError(
                f"cannot sign {role} metadata: the key store in {self.keys.path} does not hold "
                f"a threshold of the keys root trusts for {role} ({exc})"
            ) from None


def _new_signed(role: str, now: datetime) -> Any:
    if role == Root.type:
        return Root(expires=now, consistent_snapshot=True)
    if role == Timestamp.type:
        return Timestamp(expires=now)
    if role == Snapshot.type:
        return Snapshot(expires=now)
    return Targets(expires=now)


def _write_atomic(path: Path, data: bytes, role: str) -> None:
    # the crash hook kills the process with the file written but not yet in place
    write_atomic(path, data, before_replace=lambda: crash_point(f"publish-{role}"))
