"""``Offloader``: per request, run the model locally or on an edge server, and never fail
because the network did.

::

    offloader = Offloader(local=edgeinfer.load("digits"), remote=["http://edge:8000"],
                          policy="latency")
    p = offloader.predict(x, deadline=0.1)       # p.outputs, p.placement, p.latency_s, p.reason
    offloader.predict(face, private=True)        # raw inputs never leave the device

Each request: list the placements that can run it now with their expected latency and
energy (from live estimates, :mod:`.estimate`; the listing is :mod:`._deciding`), let the
policy pick (:mod:`.policy`, microseconds), run it (:mod:`._tries`). A clear local win is
held for up to 100 ms (:mod:`.sticky`), so a tiny model does not pay for deciding on every
request. Inputs are validated once: by the local model when it runs them, before anything
leaves the device otherwise.
A remote try is bounded by the per-try timeout and by what the deadline leaves after
reserving time for a local fallback. Connection failures and 503s are retried with
full-jitter backoff, on another remote if there is one, within a retry budget (retries add
at most ~10% to the requests, so they cannot amplify an outage); 4xx and timeouts are not
retried. A remote that keeps failing is ejected by its circuit breaker and probed in the
background until it answers again. Whenever the remote cannot answer, the local model
does; with no local model and no reachable server the error says so at once.

Split placements (``split=``, the ``SplitSet`` of a directory written by ``edgeinfer
split``): the head of a cut runs here and its tail on a remote, so only features leave the
device. Every cut through
every healthy remote is one more option the policy weighs against local and remote, costed
by the split planner from the same live estimates; private requests may use the cuts that
send no raw input. A tail that cannot answer is retried and falls back to local like a
remote call.

Hot swap: ``local`` may be an :class:`~edgeinfer.deliver.ActiveBundleWatcher` (or use
:meth:`Offloader.follow`): each request takes the watcher's current model once and uses
it to the end, so a request in flight finishes on the model it started on. When the model
changes, the local estimates start afresh (the new model's latency may differ) and are
measured again by the next requests.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from edgeinfer.errors import EdgeInferError, InputError
from edgeinfer.offload._deciding import _Deciding
from edgeinfer.offload._tries import _Tries
from edgeinfer.offload.breaker import CircuitBreaker
from edgeinfer.offload.energy import Battery, DeviceProfile
from edgeinfer.offload.errors import NoPlacementError, OffloadError, RemoteError
from edgeinfer.offload.estimate import LocalEstimates, RemoteEstimates
from edgeinfer.offload.policy import LOCAL, Policy, decide, get_policy
from edgeinfer.offload.pool import RemotePool
from edgeinfer.offload.remote import RemoteModel
from edgeinfer.offload.retry import RetryBudget
from edgeinfer.offload.splits import SplitCuts, SplitPlacements
from edgeinfer.offload.sticky import Sticky, stick
from edgeinfer.offload.values import OffloaderConfig, OffloadStats, Prediction, _Run

__all__ = ["OffloadStats", "Offloader", "OffloaderConfig", "Prediction"]


def _is_model_source(local: Any) -> bool:
    """A holder of the current model (``.model``, as a bundle watcher), not a model."""
    kind = type(local)
    return local is not None and not hasattr(kind, "predict") and hasattr(kind, "model")


def _model_bytes(local: Any) -> int | None:
    bundle = getattr(local, "bundle", None)
    path = getattr(bundle, "model_path", None) or getattr(
        getattr(local, "backend", None), "path", None
    )
    try:
        return None if path is None else Path(path).stat().st_size
    except OSError:
        return None


class Offloader(_Deciding, _Tries):
    """Decides per request where a model runs: on the device, or on an edge server.

    ``local``: a :class:`~edgeinfer.runtime.Model` (or anything with its ``predict`` and
    ``validate``), a path to load, a holder of the current model such as an
    :class:`~edgeinfer.deliver.ActiveBundleWatcher` (hot swap), or ``None``. ``remote``:
    :class:`RemoteModel` s, or URLs (the model name is the local model's). ``policy``: a
    name in :data:`~edgeinfer.offload.policy.POLICIES` or a callable
    ``Situation -> Decision``. ``device``: the energy model; ``battery``: a callable
    returning the charge in [0, 1] (default: the OS battery, where there is one).
    ``split``: a :class:`~edgeinfer.split.SplitSet` (``SplitSet.open(dir)`` of a directory
    written by ``edgeinfer split``; closed by the caller), whose tails the remotes serve:
    adds a split placement per cut and remote.
    ``split_public_inputs``: model inputs that a split cut may send as they are even for a
    private request (a transformer's attention mask, say).
    """

    def __init__(
        self,
        local: Any = None,
        remote: Sequence[RemoteModel | str] | RemoteModel | str = (),
        policy: str | Policy = "latency",
        *,
        device: DeviceProfile | None = None,
        battery: Battery | Callable[[], float | None] | None = None,
        config: OffloaderConfig | None = None,
        model_bytes: int | None = None,
        split: SplitCuts | None = None,
        split_public_inputs: Collection[str] = (),
    ) -> None:
        if isinstance(local, (str, os.PathLike)):
            from edgeinfer.runtime import load

            local = load(local)
        remotes_in = [remote] if isinstance(remote, (str, RemoteModel)) else list(remote)
        if local is None and not remotes_in:
            raise InputError("an Offloader needs a local model, at least one remote, or both")
        if split is not None and not remotes_in:
            raise InputError("split placements need a remote to run their tails on")
        self._source: Any = local if _is_model_source(local) else None
        self._model: Any = None if self._source is not None else local
        self._seen: Any = None  # the model the local estimates are of
        self._owned_source = False  # made by follow(): stopped by close()
        self.config = cfg = config or OffloaderConfig()
        self.policy = get_policy(policy)
        self.device = device or DeviceProfile()
        self.battery = battery if isinstance(battery, Battery) else Battery(battery)
        self._model_bytes_given = model_bytes is not None
        self._lock = threading.Lock()  # guards estimates and stats
        self.stats = OffloadStats()
        self.local_est = LocalEstimates(cfg.window, cfg.alpha)
        local = self._current()
        self.model_bytes = model_bytes if model_bytes is not None else _model_bytes(local)
        remotes: list[RemoteModel] = []
        for r in remotes_in:
            if isinstance(r, str):
                if local is None:
                    raise InputError(
                        f"remote {r!r} given as a URL needs a local model to take the model "
                        "name from; pass RemoteModel(url, model) instead"
                    )
                r = RemoteModel(r, str(local.name))
            remotes.append(r)
        self.remotes = tuple(remotes)
        self.pool = RemotePool(
            remotes,
            breaker=cfg.breaker,
            probe_timeout_s=cfg.probe_timeout_s,
            window=cfg.window,
            alpha=cfg.alpha,
            lock=self._lock,
        )
        self.budget = RetryBudget(cfg.retry.budget_ratio, cfg.retry.budget_reserve)
        self.split = None if split is None else SplitPlacements(split, split_public_inputs)
        self._rng = random.Random()
        self._closed = False
        self._sticky: Sticky | None = None  # a clear local decision, held briefly

    @classmethod
    def follow(
        cls,
        state_dir: str | os.PathLike[str],
        remote: Sequence[RemoteModel | str] | RemoteModel | str = (),
        policy: str | Policy = "latency",
        *,
        interval: float = 1.0,  # seconds between checks for a newly committed bundle
        loader: Callable[[Path], Any] | None = None,
        **kwargs: Any,
    ) -> Offloader:
        """An Offloader whose local model is the bundle the update agent committed in
        ``state_dir``, switching to each newly committed one without failing a request.

        ``loader``: how a bundle directory becomes a model (default ``edgeinfer.load``).
        Other keyword arguments are the constructor's. ``close()`` stops the watching.
        """
        from edgeinfer.deliver.watch import ActiveBundleWatcher

        watcher = ActiveBundleWatcher(state_dir, loader=loader, interval=interval)
        off = cls(watcher, remote, policy, **kwargs)
        off._owned_source = True
        watcher.start()
        return off

    # ------------------------------------------------------------ the local model
    @property
    def local(self) -> Any:
        """The local model now (``None``: none; with a watcher, the committed bundle's)."""
        return self._current()

    @property
    def watcher(self) -> Any:
        """What the local model is taken from per request, when it can change (or ``None``)."""
        return self._source

    def _current(self) -> Any:
        """The local model for one request, taken once; a new one resets its estimates."""
        if self._source is None:
            return self._model
        try:
            model = self._source.model
        except EdgeInferError:  # nothing committed yet: no local model for now
            return None
        if model is not self._seen:
            self._swapped(model)
        return model

    def _swapped(self, model: Any) -> None:
        with self._lock:
            if model is self._seen:
                return
            if self._seen is not None:
                self.stats.swaps += 1
            self._seen = model
            # the new model's latency is unknown: measure it again rather than assume
            self.local_est = LocalEstimates(self.config.window, self.config.alpha)
            if not self._model_bytes_given:
                self.model_bytes = _model_bytes(model)

    def __repr__(self) -> str:
        name = getattr(self.policy, "__name__", "policy")
        split = "" if self.split is None else f", split={self.split.set.root}"
        return (
            f"Offloader(local={self.local!r}, remote={list(self.remotes)!r}, policy={name}{split})"
        )

    def __enter__(self) -> Offloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def estimates(self, index: int = 0) -> RemoteEstimates:
        """The live estimates of remote ``index`` (for reports and tests)."""
        return self.pool.slots[index].est

    def breaker(self, index: int = 0) -> CircuitBreaker:
        """The circuit breaker of remote ``index``."""
        return self.pool.slots[index].breaker

    # ------------------------------------------------------------ running
    def predict(
        self,
        inputs: Any,
        outputs: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
        private: bool = False,
    ) -> Prediction:
        """Run the model where the policy says; fall back to local if the remote fails.

        ``deadline``: seconds this request may take, retries included (``None``: only the
        per-try timeout and retry limits bound it). ``private=True``: the inputs never
        leave the device raw. Raises :class:`NoPlacementError` at once when there is
        nowhere to run it.
        """
        if self._closed:
            raise OffloadError("this Offloader is closed")
        start = time.perf_counter()
        model = self._current()  # this request's local model, used to its end
        if model is None and not self.pool.any_closed():
            for slot in self.pool.slots:
                self.pool.maybe_probe(slot)
            raise NoPlacementError(
                "nowhere to run this request: no local model, and every server failed "
                "recently (their circuit breakers are open; they are probed in the background)"
            )
        arrays, checked = self._arrays(inputs, model)
        run = _Run(arrays, outputs, start, deadline, model, private)
        held = self._sticky
        if held is not None and held.holds(
            run.sig, private, model, start, self.local_est.predict(run.sig, run.elements), deadline
        ):
            situation, decision = None, held.decision  # the device wins clearly: no need to ask
        else:
            situation = self._situation(run)
            decision = decide(self.policy, situation)
            # held only while every remote is in the running: a server coming back is weighed
            self._sticky = (
                stick(self.policy, situation, decision, run.sig, model, start)
                if all(slot.breaker.closed for slot in self.pool.slots)
                else None
            )
        run.decided = decided = time.perf_counter()
        self.budget.deposit()
        with self._lock:
            self.stats.requests += 1
        kind = decision.placement.kind
        if kind == "local":
            out, energy = self._run_local(run)
            return Prediction(
                out,
                "local",
                time.perf_counter() - start,
                decision.reason,
                LOCAL,
                decision_s=decided - start,
                energy_j=energy,
            )
        if kind == "remote" or (kind == "split" and self.split is not None):
            assert situation is not None  # only local decisions are held
            if not checked:  # nothing leaves the device unvalidated
                run.arrays = self._validate(run.arrays, model)
            local_option = situation.local
            reserve = 0.0 if local_option is None else local_option.latency_s or 0.0
            chosen = next(o for o in situation.options if o.placement == decision.placement)
            return self._offload(decision, run, reserve, chosen.latency_s)
        raise OffloadError(f"placement {decision.placement} is not supported by this Offloader")

    # ------------------------------------------------------------ measuring
    def probe(self) -> list[float | None]:
        """Probe every remote now (blocking); round trips in seconds, ``None`` if failed."""
        return [self.pool.probe(slot) for slot in self.pool.slots]

    def calibrate(self, inputs: Any, runs: int = 3) -> None:
        """Measure every placement ``runs`` times (after one uncounted warm-up run each) so
        the first decisions are informed. With split placements, every cut through every
        remote runs too (its tail's first call, like the others', is not counted)."""
        model = self._current()
        run = _Run(self._validate(inputs, model), None, time.perf_counter(), None, model)
        timeout = self.config.per_try_timeout_s
        cuts = () if self.split is None else self.split.cuts
        for _ in range(runs):
            self.probe()
        if model is not None:  # a first run is slower (caches, allocations): not counted
            model.predict(run.arrays)
        for slot in self.pool.slots:
            if slot.breaker.closed:
                with contextlib.suppress(RemoteError):
                    slot.remote.infer(run.arrays, timeout=timeout, validated=True)
                for cut in cuts:
                    with contextlib.suppress(RemoteError):
                        assert self.split is not None
                        self.split.run(slot, cut, run.arrays, None, private=False, timeout=timeout)
        for _ in range(runs):
            if model is not None:
                self._run_local(run)
            for slot in self.pool.slots:
                if not slot.breaker.closed:
                    continue
                with contextlib.suppress(RemoteError):
                    self._try_remote(slot, run, timeout)
                for cut in cuts:
                    if slot.breaker.closed:
                        with contextlib.suppress(RemoteError):
                            self._try_split(slot, cut, run, timeout)

    def close(self) -> None:
        """Stop background probes and close the remotes and split tails (the local model
        stays open; a watcher made by :meth:`follow` stops)."""
        self._closed = True
        self.pool.close()
        for r in self.remotes:
            r.close()
        if self.split is not None:
            self.split.close()
        if self._owned_source:
            self._source.stop()
