"""Hot swap: follow the bundle the agent committed, without failing in-flight requests.

:class:`ActiveBundleWatcher` polls ``STATE_DIR/active.json`` (cheap: one ``stat`` per
poll, a read only when it changed). When the *committed* bundle changes it loads the new
:class:`~edgeinfer.runtime.model.Model` first, then swaps one reference under a lock.
Callers take ``watcher.model`` once per request and use that object to the end of the
request, so a request that started on the old model finishes on it; the old model is not
closed under it but released when the last such request drops it. A bundle that fails to
load leaves the current model serving (the error is kept in ``last_error``).

Servers and the offloader hook in with ``on_swap(old, new)``::

    watcher = ActiveBundleWatcher("/var/lib/edgeinfer", on_swap=registry.replace)
    watcher.start()                # background polling thread
    model = watcher.model          # per request
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.deliver.errors import DeliverError
from edgeinfer.deliver.slots import SlotInfo, SlotStore

if TYPE_CHECKING:
    from edgeinfer.runtime.model import Model

__all__ = ["ActiveBundleWatcher", "committed_bundle"]

logger = logging.getLogger(__name__)


def committed_bundle(state_dir: str | os.PathLike[str]) -> Path | None:
    """The directory of the bundle the agent committed in ``state_dir`` (``None``: none)."""
    store = SlotStore(state_dir)
    info = store.committed()
    return None if info is None else store.bundle_dir(info)


def _default_loader(path: Path) -> Model:
    from edgeinfer.runtime.model import load

    return load(path)


class ActiveBundleWatcher:
    """Keeps a :class:`Model` of the committed bundle, reloading when the agent commits."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        loader: Callable[[Path], Model] | None = None,
        on_swap: Callable[[Model | None, Model], None] | None = None,
        interval: float = 1.0,  # seconds between polls of the background thread
    ) -> None:
        self.store = SlotStore(state_dir)
        self.loader = loader or _default_loader
        self.on_swap = on_swap
        self.interval = interval
        self.last_error: Exception | None = None
        self.swaps = 0
        self._lock = threading.Lock()  # guards the swap of the reference
        self._check_lock = threading.Lock()  # one check (and load) at a time
        self._model: Model | None = None
        self._info: SlotInfo | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.check()

    @property
    def model(self) -> Model:
        """The current model (take it once per request)."""
        model = self._model
        if model is None:
            raise DeliverError(
                f"no committed bundle in {self.store.root} yet"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        return model

    @property
    def current(self) -> SlotInfo | None:
        """What the current model was loaded from."""
        return self._info

    def check(self) -> bool:
        """Reload if the committed bundle changed; ``True`` when a swap happened."""
        with self._check_lock:
            return self._check()

    def _check(self) -> bool:
        try:
            st = self.store.pointer_path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return False
        info = self.store.committed()
        if info is None or info == self._info:
            self._stamp = stamp
            return False
        try:
            new = self.loader(self.store.bundle_dir(info))
        except Exception as exc:  # keep serving the old model whatever went wrong
            self.last_error = exc
            logger.warning("hot swap to %s v%d failed: %s", info.name, info.version, exc)
            return False
        with self._lock:
            old, self._model, self._info = self._model, new, info
            self._stamp = stamp
            self.swaps += 1
        self.last_error = None
        logger.info("hot swap: now serving %s v%d", info.name, info.version)
        if self.on_swap is not None:
            self.on_swap(old, new)
        return True

    # ------------------------------------------------------------ background polling
    def start(self) -> ActiveBundleWatcher:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="edgeinfer-bundle-watcher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ActiveBundleWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # pragma: no cover - never let the thread die
                self.last_error = exc
                logger.exception("bundle watcher check failed")
