"""The model repository: Triton's directory layout, loaded, watched and controlled.

::

    MODEL_REPOSITORY/
      digits/               model name (letters, digits, '.', '_', '-')
        config.json         optional: batching/backpressure for this model, e.g.
                            {"max_batch_size": 4, "queue_timeout_s": 0.5}
        1/                  version number
          manifest.json     a bundle (verified on load, golden sample checked) ...
          model.onnx
        2/
          model.onnx        ... or a bare model.onnx / model.tflite

Every version found is loaded (``config.json`` keys override the server's
:class:`~edgeinfer.serve.config.BatchConfig` fields for that model); a request without a
version gets the highest ready one. Valid names and versions, what a version directory
loads from and its fingerprint are :mod:`edgeinfer.serve.model_dirs`.
``refresh()`` (called every ``poll_interval_s`` by the server) compares each version
directory's file sizes and mtimes with what was loaded and loads what was added or changed,
swapping it in only once it has loaded and passed its golden check: a broken update never
replaces a working model. Versions whose directory disappeared are unloaded, after the
new ones have loaded. ``load`` and ``unload`` are the admin's explicit controls; a model
unloaded by the admin stays unloaded until the admin loads it again.

Followed state directories (``follow``, where an update agent keeps its A/B slots) add one
model each: the bundle the agent *committed* (never one on trial), under the name and version
of its manifest. When the agent commits a new version the next scan loads it, checks its
golden sample and swaps it in; the old version's batcher then lets what is queued and running
finish before the old model is closed, so no request fails. A followed model keeps its last
good version while a new one fails to load. A state directory with nothing committed yet
keeps the server not ready. Each switch is logged on one INFO line (model, old and new
version, state directory), so an operator can tell which version answered when.

A request for a model the server does not know is answered 404 with the models it serves,
and apart from them the ones that failed to load (their reasons are in the repository index).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.bundle import MANIFEST_FILE
from edgeinfer.errors import EdgeInferError
from edgeinfer.runtime.model import Model, load
from edgeinfer.serve.batching import Batcher
from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import ModelLoadError, ModelNotFound, ModelNotReady
from edgeinfer.serve.model_dirs import (
    MODEL_FILES,
    NAME,
    VERSION,
    Fingerprint,
    check_model_name,
    check_version,
    fingerprint,
    model_batch_config,
    version_source,
)

__all__ = ["LoadedVersion", "ModelRepository", "check_model_name", "check_version"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedVersion:
    """One model version in service: the model and its batcher."""

    name: str
    version: int
    path: Path
    model: Model
    batcher: Batcher
    fingerprint: Fingerprint


@dataclass
class _Entry:
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # version -> why it failed to load
    failed: dict[int, Fingerprint] = field(default_factory=dict)  # do not retry unchanged
    unloaded: bool = False  # by the admin: stays unloaded until loaded again


class ModelRepository:
    """The models of one repository directory, as loaded versions with batchers."""

    def __init__(
        self,
        root: Path | None,
        make_batcher: Callable[[Model, str, BatchConfig], Batcher],
        batching: BatchConfig | None = None,
        *,
        threads: int | None = None,
        providers: str | tuple[str, ...] = "cpu",
        on_change: Callable[[str, int, bool], None] | None = None,
        follow: Sequence[Path] = (),
    ) -> None:
        self.root = None if root is None else Path(root)
        self.follow = tuple(Path(p) for p in follow)
        self._followed: dict[str, Path] = {}  # model name -> the followed state dir giving it
        self._waiting: tuple[Path, ...] = ()  # followed state dirs with nothing committed
        self._make_batcher = make_batcher
        self._batching = batching or BatchConfig()
        self._threads = threads
        self._providers = providers
        self._on_change = on_change or (lambda name, version, ready: None)
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()
        self.scanned = False

    # ------------------------------------------------------------ reading
    def names(self) -> list[str]:
        return sorted(self._entries)

    def is_known(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        """The version to serve, or :class:`ModelNotFound` / :class:`ModelNotReady`."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name!r}; {self._list()}")
        if version is None:
            if not entry.versions:
                raise ModelNotReady(self._why(name, entry))
            return entry.versions[max(entry.versions)]
        loaded = entry.versions.get(version)
        if loaded is None:
            if version in entry.errors:
                raise ModelNotReady(f"model {name!r} version {version}: {entry.errors[version]}")
            have = ", ".join(map(str, sorted(entry.versions))) or "none loaded"
            raise ModelNotFound(f"model {name!r} has no version {version} (versions: {have})")
        return loaded

    def versions(self, name: str) -> list[int]:
        entry = self._entries.get(name)
        return sorted(entry.versions) if entry else []

    def all_ready(self) -> bool:
        """Scanned, every followed state dir has a committed bundle, and every model not
        unloaded by the admin has a version in service."""
        return (
            self.scanned
            and not self._waiting
            and all(e.versions or e.unloaded for e in self._entries.values())
        )

    def index(self) -> list[dict[str, Any]]:
        """Every model version known, with its state (Triton's repository index format)."""
        rows: list[dict[str, Any]] = []
        for name in sorted(self._entries):
            e = self._entries[name]
            for v in sorted(set(e.versions) | set(e.errors)):
                state = "READY" if v in e.versions else "UNAVAILABLE"
                row: dict[str, Any] = {"name": name, "version": str(v), "state": state}
                if v not in e.versions:
                    row["reason"] = e.errors[v]
                rows.append(row)
            if not e.versions and not e.errors:
                reason = "unloaded" if e.unloaded else "no loadable version"
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        return rows

    def _list(self) -> str:
        """The models served and, apart, those that failed to load (for a 404's message)."""
        served = [n for n, e in sorted(self._entries.items()) if e.versions]
        failed = [n for n, e in sorted(self._entries.items()) if not e.versions and e.errors]
        text = "this server serves " + (", ".join(map(repr, served)) or "no models")
        if failed:
            text += f"; failed to load: {', '.join(map(repr, failed))}"
        return text

    def _why(self, name: str, entry: _Entry) -> str:
        if entry.unloaded:
            return f"model {name!r} is unloaded; an admin can load it again"
        errors = "; ".join(f"version {v}: {m}" for v, m in sorted(entry.errors.items()))
        return f"model {name!r} is not ready ({errors or 'no loadable version'})"

    # ------------------------------------------------------------ scanning
    def _scan(self) -> dict[str, dict[int, Path]]:
        """name -> version -> version directory, for everything on disk right now."""
        found: dict[str, dict[int, Path]] = {}
        if self.follow:
            self._scan_followed(found)
        if self.root is None:
            return found
        if not self.root.is_dir():
            log.warning("model repository %s does not exist", self.root)
            return found
        for mdir in sorted(self.root.iterdir()):
            if not mdir.is_dir() or mdir.name.startswith("."):
                continue
            if not NAME.match(mdir.name):
                log.warning("skipping %s: not a valid model name", mdir)
                continue
            if mdir.name in found:
                log.warning("skipping %s: model %r is followed from a state dir", mdir, mdir.name)
                continue
            versions = {
                int(v.name): v for v in mdir.iterdir() if v.is_dir() and VERSION.match(v.name)
            }
            found[mdir.name] = versions
        return found

    def _scan_followed(self, found: dict[str, dict[int, Path]]) -> None:
        """Add the committed bundle of every followed state dir to ``found``."""
        from edgeinfer.deliver.slots import SlotStore  # the deliver extra, only when following

        followed: dict[str, Path] = {}
        waiting: list[Path] = []
        for state_dir in self.follow:
            store = SlotStore(state_dir)
            info = store.committed()
            if info is None:
                waiting.append(state_dir)
            elif not NAME.match(info.name):
                log.warning("%s: committed model name %r is not valid", state_dir, info.name)
                waiting.append(state_dir)
            elif info.name in found:
                log.warning(
                    "%s: model %r is already followed from another state dir; ignored",
                    state_dir,
                    info.name,
                )
            else:
                found[info.name] = {info.version: store.bundle_dir(info)}
                followed[info.name] = state_dir
        self._followed, self._waiting = followed, tuple(waiting)

    # ------------------------------------------------------------ changing
    async def refresh(self, only: str | None = None, *, force: bool = False) -> None:
        """Bring loaded versions in line with the disk (one model, or all)."""
        async with self._lock:
            disk = await asyncio.to_thread(self._scan)
            names = [only] if only is not None else sorted(set(disk) | set(self._entries))
            for name in names:
                entry = self._entries.setdefault(name, _Entry())
                if entry.unloaded and not force:
                    continue
                keep_last = name in self._followed
                before = max(entry.versions, default=None)
                await self._sync(name, entry, disk.get(name, {}), force, keep_last=keep_last)
                after = max(entry.versions, default=None)
                if keep_last and before is not None and after is not None and before != after:
                    log.info(
                        "model %s: switched from version %s to version %s (committed in %s)",
                        name,
                        before,
                        after,
                        self._followed[name],
                    )
                if name not in disk:
                    del self._entries[name]
            self.scanned = True

    async def _sync(
        self,
        name: str,
        entry: _Entry,
        on_disk: dict[int, Path],
        force: bool,
        *,
        keep_last: bool = False,  # keep the versions in service if none on disk loads
    ) -> None:
        for version in [v for v in entry.errors if v not in on_disk]:
            entry.errors.pop(version)
            entry.failed.pop(version, None)
        for version, path in sorted(on_disk.items()):
            try:
                fp = await asyncio.to_thread(fingerprint, path)
            except OSError:
                continue  # vanished while scanning: the next scan sees the truth
            current = entry.versions.get(version)
            if current is not None and current.fingerprint == fp and not force:
                continue
            if entry.failed.get(version) == fp and not force:
                continue  # it failed as it is; wait for it to change
            try:
                loaded = await asyncio.to_thread(self._load, name, version, path, fp)
            except EdgeInferError as exc:
                entry.errors[version] = str(exc)
                entry.failed[version] = fp
                log.warning("model %s version %s not loaded: %s", name, version, exc)
                continue
            entry.errors.pop(version, None)
            entry.failed.pop(version, None)
            entry.versions[version] = loaded
            self._on_change(name, version, True)
            log.info("model %s version %s %s", name, version, "reloaded" if current else "loaded")
            if current is not None:
                await self._drop(current)
        # only now, with what replaces them in service, do vanished versions go
        vanished = [v for v in entry.versions if v not in on_disk]
        if keep_last and len(vanished) == len(entry.versions):
            return
        for version in vanished:
            await self._drop(entry.versions.pop(version))

    def _load(self, name: str, version: int, path: Path, fp: Fingerprint) -> LoadedVersion:
        """On a worker thread: open, verify, load, golden-check and warm up one version."""
        source = version_source(path)
        if source is None:
            raise ModelLoadError(
                f"{path}: no {MANIFEST_FILE} (bundle) and no {' or '.join(MODEL_FILES)}"
            )
        batch_config = model_batch_config(path.parent, self._batching)
        providers = self._providers if isinstance(self._providers, str) else list(self._providers)
        model = load(source, providers=providers, threads=self._threads)
        try:
            golden = model.bundle is not None and model.bundle.golden() is not None
            if golden:  # the health gate, and the warm-up
                assert model.bundle is not None
                mismatches = model.bundle.check_golden(model)
                if mismatches:
                    raise ModelLoadError(
                        f"{path}: the golden sample does not reproduce: {mismatches[0]}"
                    )
            else:
                try:
                    model.warmup()
                except EdgeInferError as exc:
                    # random inputs may be out of range (token ids, say): not the model's fault
                    log.info("model %s version %s: warm-up skipped (%s)", name, version, exc)
        except BaseException:
            model.close()
            raise
        batcher = self._make_batcher(model, name, batch_config)
        return LoadedVersion(name, version, path, model, batcher, fp)

    async def _drop(self, loaded: LoadedVersion) -> None:
        self._on_change(loaded.name, loaded.version, False)
        await loaded.batcher.close()
        loaded.model.close()
        log.info("model %s version %s unloaded", loaded.name, loaded.version)

    async def load(self, name: str) -> None:
        """Admin: (re)load every version of ``name`` from disk."""
        check_model_name(name)
        in_root = self.root is not None and (self.root / name).is_dir()
        if not in_root and name not in self._followed:
            raise ModelNotFound(f"no model {name!r} in the repository {self.root}")
        entry = self._entries.setdefault(name, _Entry())
        entry.unloaded = False
        await self.refresh(name, force=True)
        entry = self._entries.get(name, entry)
        if not entry.versions:
            raise ModelLoadError(self._why(name, entry))

    async def unload(self, name: str) -> None:
        """Admin: unload every version of ``name``; it stays unloaded until loaded again."""
        check_model_name(name)
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFound(f"unknown model {name!r}; {self._list()}")
            entry.unloaded = True
            for version in list(entry.versions):
                await self._drop(entry.versions.pop(version))
            entry.errors.clear()
            entry.failed.clear()

    async def close(self) -> None:
        async with self._lock:
            for entry in self._entries.values():
                for version in list(entry.versions):
                    await self._drop(entry.versions.pop(version))
