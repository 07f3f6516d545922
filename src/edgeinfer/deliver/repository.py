"""The TUF repository itself: plain static files any HTTP server can host, kept coherent.

:class:`TufRepository` creates the metadata (root, targets, snapshot, timestamp), follows
the key store when its keys change, re-signs metadata before it expires, and lets one
writer in at a time; :class:`~edgeinfer.deliver.publish.Publisher` builds on it to add
bundles. Metadata is written with python-tuf's Metadata API through its
``tuf.repository.Repository`` base (``edit_*``, ``do_snapshot``, ``do_timestamp``), as the
python-tuf repository examples do; the files themselves are kept by
:class:`~edgeinfer.deliver._metadata_store.MetadataStore`. The layout uses consistent
snapshots, so a device reading while a publish runs always sees one coherent state::

    repo/
      metadata/1.root.json  2.root.json  root.json (latest, for provisioning devices)
               7.targets.json  9.snapshot.json  timestamp.json
      targets/models/<name>/<sha256>.<name>-<version>.tar
              deltas/<name>/<sha256>.<name>-<from>-<to>.delta

Files go in the order targets -> targets metadata -> snapshot -> timestamp (last, with
``os.replace``). Snapshot and timestamp pin the length and sha256 of the metadata they
name, which defeats mix-and-match. Keys come from a :class:`~edgeinfer.deliver.keys.KeyStore`
that must live outside the repository; when the store's keys no longer match root (after
``keys rotate``), the next operation publishes a new root signed by the old *and* the new
root keys, then re-signs what the rotated keys sign.

One writer at a time: every operation holds an exclusive lock on the repository directory
(``flock``, released by the kernel when a publisher dies). Whatever is found under that lock
and belongs to no publish -- ``targets/.staging.*``, half-written ``metadata/.*.json.*``,
and targets or snapshot metadata newer than the timestamp leads to, which no device can
see -- was left by a publish that was killed, and is removed first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tuf.api.metadata import (  # type: ignore[attr-defined]
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from edgeinfer.deliver._fsutil import exclusive_lock
from edgeinfer.deliver._metadata_store import MetadataStore
from edgeinfer.deliver.errors import KeyStoreError, PublishError
from edgeinfer.deliver.keys import ROLES, KeyStore

__all__ = ["STAGING_PREFIX", "TufRepository"]

STAGING_PREFIX = ".staging."  # targets/.staging.*: one publish's work directory


class TufRepository(MetadataStore):
    """A TUF repository in ``repo_dir``: created, re-signed and locked, with no bundles of
    its own (:class:`~edgeinfer.deliver.publish.Publisher` adds them)."""

    def __init__(
        self,
        repo_dir: str | os.PathLike[str],
        keys: KeyStore | str | os.PathLike[str],
        expiry: Mapping[str, float],  # role -> days until the metadata expires
        *,
        lock_timeout: float,  # seconds to wait while another publish holds the repository
        now: Callable[[], datetime] | None = None,
    ) -> None:
        store = keys if isinstance(keys, KeyStore) else KeyStore.open(keys)
        clock = now or (lambda: datetime.now(timezone.utc))
        super().__init__(Path(repo_dir), store, expiry, clock)
        repo_abs, keys_abs = self.repo.resolve(), self.keys.path.resolve()
        if keys_abs == repo_abs or repo_abs in keys_abs.parents:
            raise KeyStoreError(
                f"key directory {self.keys.path} is inside the repository {self.repo}, which is "
                "served to the world; keep private keys elsewhere"
            )
        self.targets_dir = self.repo / "targets"
        self.lock_timeout = lock_timeout
        self._lock_depth = 0

    def init(self) -> None:
        """Create root, targets, snapshot and timestamp metadata (version 1) if missing."""
        with self.locked():
            self._init()

    def _init(self) -> None:
        if self.exists:
            return
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        if self._current_path(Root.type) is None:
            with self.edit_root() as root:
                for role in ROLES:
                    for key in self.keys.public_keys(role):
                        root.add_key(key, role)
                    root.roles[role].threshold = self.keys.thresholds[role]
        with self.edit_targets():
            pass
        self.do_snapshot(force=True)
        self.do_timestamp(force=True)

    def sync_keys(self) -> list[str]:
        """Publish a new root if the key store's keys differ from root's; re-sign the rest.

        Returns the roles whose keys or thresholds changed.
        """
        with self.locked():
            return self._sync_keys()

    def _sync_keys(self) -> list[str]:
        self.keys.check()
        root = self.root()
        changed = [
            r
            for r in ROLES
            if set(root.roles[r].keyids) != {k.keyid for k in self.keys.key_infos(r)}
            or root.roles[r].threshold != self.keys.thresholds[r]
        ]
        if not changed:
            self.keys.forget_retired()
            return []
        with self.edit_root() as new_root:
            for r in changed:
                for keyid in list(new_root.roles[r].keyids):
                    new_root.revoke_key(keyid, r)
                for key in self.keys.public_keys(r):
                    new_root.add_key(key, r)
                new_root.roles[r].threshold = self.keys.thresholds[r]
        if Targets.type in changed:
            with self.edit_targets():
                pass
        self.do_snapshot(force=Snapshot.type in changed)
        self.do_timestamp(force=True)
        self.keys.forget_retired()
        return changed

    def refresh(self) -> list[str]:
        """Re-sign the timestamp (and targets/snapshot when half their life is gone)."""
        with self.locked():
            return self._refresh()

    def _refresh(self) -> list[str]:
        if not self.exists:
            self._init()
        done = [f"keys:{r}" for r in self._sync_keys()]
        now = self._now()

        def ageing(role: str, days: float) -> bool:
            return bool(self.open(role).signed.expires - now < timedelta(days=days / 2))

        targets = ageing(Targets.type, self.expiry[Targets.type])
        if targets:
            with self.edit_targets():
                pass
            done.append(Targets.type)
        if targets or ageing(Snapshot.type, self.expiry[Snapshot.type]):
            self.do_snapshot(force=True)
            done.append(Snapshot.type)
        self.do_timestamp(force=True)
        done.append(Timestamp.type)
        return done

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository for one publish; clean what killed publishes left.

        Waits up to ``lock_timeout`` (``PublishConfig.lock_timeout``) for another publish to finish.
        """
        if self._lock_depth:  # init, sync_keys and refresh run inside a publish too
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        wait = self.lock_timeout

        def busy() -> PublishError:
            return PublishError(
                f"another publish holds the repository {self.repo} (waited {wait:g} s); "
                "try again when it is done"
            )

        self.repo.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.repo, wait, busy):
            self._lock_depth = 1
            try:
                self._clean_stale()
                yield
            finally:
                self._lock_depth = 0

    def _clean_stale(self) -> list[Path]:
        """Remove what killed publishes left (only ever called under the lock)."""
        gone = []
        if self.targets_dir.is_dir():
            for staging in self.targets_dir.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(staging, ignore_errors=True)
                gone.append(staging)
        gone += self.remove_unreachable()
        return gone

    def _ready(self) -> None:
        if not self.exists:
            self._init()
        self._sync_keys()
