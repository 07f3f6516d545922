"""How the :class:`~edgeinfer.offload.Offloader` decides where a request runs: the inputs
validated once (by the local model, or by a reachable server's metadata when there is no
local model), the placements open to them now with their expected latency and energy from
the live estimates (a :class:`~edgeinfer.offload.policy.Situation`), and the policy's
:class:`~edgeinfer.offload.policy.Decision`. Running what was decided is :mod:`._tries`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeinfer.offload.energy import Battery, DeviceProfile
from edgeinfer.offload.errors import NoPlacementError, RemoteError
from edgeinfer.offload.estimate import LocalEstimates
from edgeinfer.offload.policy import LOCAL, Decision, Option, Policy, Situation, decide
from edgeinfer.offload.pool import RemotePool
from edgeinfer.offload.splits import SplitPlacements
from edgeinfer.offload.values import OffloaderConfig, _Run

__all__: list[str] = []


_CURRENT = object()  # "the local model now", where None would mean "no local model"


class _Deciding:
    """The Offloader's deciding half (a mixin): what it needs of the Offloader is below."""

    config: OffloaderConfig
    policy: Policy
    device: DeviceProfile
    battery: Battery
    model_bytes: int | None
    pool: RemotePool
    split: SplitPlacements | None
    local_est: LocalEstimates
    _current: Callable[[], Any]  # the local model for one request, taken once

    def _validate(self, inputs: Any, model: Any = _CURRENT) -> dict[str, np.ndarray]:
        if model is _CURRENT:
            model = self._current()
        if model is not None:
            return model.validate(inputs)  # type: ignore[no-any-return]
        last: RemoteError | None = None
        for slot in self.pool.slots:
            if not slot.breaker.closed:
                continue
            try:
                slot.remote.metadata(timeout=self.config.probe_timeout_s)
            except RemoteError as exc:
                self.pool.failed(slot, exc)
                last = exc
                continue
            return slot.remote.validate(inputs)
        raise NoPlacementError(
            "nowhere to run this request: no local model, and no server can be reached"
            + (f" (last error: {last})" if last else " (every server is ejected after failures)")
        ) from last

    def situation(
        self, arrays: dict[str, np.ndarray], deadline: float | None = None, private: bool = False
    ) -> Situation:
        """The placements open to these (validated) inputs now, with their expected costs."""
        return self._situation(_Run(arrays, None, 0.0, deadline, self._current(), private))

    def _situation(self, run: _Run) -> Situation:
        sig, elements, raw = run.sig, run.elements, run.raw
        now = time.perf_counter()
        explore = self.config.explore_after_s
        options: list[Option] = []
        local_s = self.local_est.predict(sig, elements) if run.model is not None else None
        if run.model is not None:
            lat = local_s
            if explore is not None and now - self.local_est.updated(sig) > explore:
                lat = None  # old or never measured: measure (again)
            energy = None if lat is None else self.device.local_joules(lat)
            age = now - self.local_est.updated(sig)
            options.append(Option(LOCAL, lat, energy, 1.0, False, "local", age))
        for slot in self.pool.slots:
            if not slot.breaker.closed:
                self.pool.maybe_probe(slot)  # its half-open trial, when due
                continue
            est = slot.est
            if now - est.rtt.updated > self.config.probe_after_s or est.rtt.value is None:
                self.pool.maybe_probe(slot)  # keep the RTT fresh: calls cannot measure it
            lat = est.predict(sig, elements, raw)
            if lat is not None and explore is not None and now - est.last_call > explore:
                lat = None
            energy = None
            if lat is not None:
                up, down = est.wire_bytes(sig, raw)
                energy = self.device.remote_joules(lat, up, down)
            options.append(
                Option(
                    slot.placement, lat, energy, est.success, True, slot.label, now - est.last_call
                )
            )
            if self.split is not None:
                options += self.split.options(
                    slot, sig, local_s=local_s, device=self.device, now=now
                )
        return Situation(
            tuple(options), run.deadline, run.private, self.battery.level(), self.model_bytes
        )

    def decide(self, inputs: Any, deadline: float | None = None, private: bool = False) -> Decision:
        """What ``predict`` would do with these inputs now, without running anything."""
        model = self._current()
        run = _Run(self._validate(inputs, model), None, 0.0, deadline, model, private)
        return decide(self.policy, self._situation(run))

    def _arrays(self, inputs: Any, model: Any) -> tuple[dict[str, np.ndarray], bool]:
        """The inputs as arrays, and whether they were validated here.

        A dict of numpy arrays with a local model is taken as it is: deciding needs only
        its shapes, the local model validates what it runs, and the remote path validates
        before anything leaves the device. That keeps the local path to one validation.
        """
        if (
            model is not None
            and type(inputs) is dict
            and all(type(v) is np.ndarray for v in inputs.values())
        ):
            return inputs, False
        return self._validate(inputs, model), True
