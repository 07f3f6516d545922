"""Split placements for the :class:`~edgeinfer.offload.Offloader`: what each cut would cost
now, as policy options, and how to run the one a policy picks.

A :class:`SplitSet` is the device side of a directory written by ``edgeinfer split``: the
profile, the head bundles (loaded on first use) and the names of the tails a server hosts.
:func:`split_options` turns the offloader's live estimates of one remote (round trip,
bandwidth, server time) and of the local model into one
:class:`~edgeinfer.placement.Option` per split cut, costed by the planner
(:func:`~edgeinfer.split.planner.cut_cost`): ``Placement("split", remote, cut)``, its
expected latency and device energy, and ``sends_raw`` when the cut carries a model input.
:meth:`SplitSet.runner` gives the :class:`~edgeinfer.split.runner.SplitModel` that runs it.

>>> splits = SplitSet.open("out/split")                                   # doctest: +SKIP
>>> options = split_options(splits, 0, slot.est, local_s=0.040)           # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.placement import DeviceProfile, LinkEstimates, Option, Placement
from edgeinfer.split.package import head_name, tail_name
from edgeinfer.split.planner import Estimates, cut_cost
from edgeinfer.split.profile import PROFILE_FILE, CutProfile, SplitProfile

if TYPE_CHECKING:
    from edgeinfer.split.runner import SplitModel

__all__ = ["SplitSet", "estimates_from", "split_options"]

_MIN_MS = 0.05  # profile times below this are too small to scale from


class SplitSet:
    """The split cuts a device can use: profile, heads here, tails on the servers."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        profile: SplitProfile,
        *,
        cuts: Collection[int] | None = None,
        threads: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.profile = profile
        self.threads = threads
        chosen = [c for c in profile.cuts if c.kind == "split"]
        if cuts is not None:
            for index in cuts:
                profile.cut(index)  # raises for unknown cuts
            chosen = [c for c in chosen if c.index in cuts]
        self.cuts: tuple[CutProfile, ...] = tuple(chosen)  # whole-model ones are the
        # offloader's own "local" and "remote" placements
        self._heads: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        package: str | os.PathLike[str],
        *,
        cuts: Collection[int] | None = None,
        threads: int | None = None,
    ) -> SplitSet:
        """The split cuts of a directory written by ``edgeinfer split``."""
        root = Path(package)
        return cls(root, SplitProfile.load(root / PROFILE_FILE), cuts=cuts, threads=threads)

    def tail_name(self, cut: int) -> str:
        """The model name a server hosts this cut's tail under."""
        return tail_name(self.profile.model, cut)

    def head(self, cut: int) -> Any:
        """The head of ``cut`` as a local :class:`~edgeinfer.runtime.Model` (cached)."""
        with self._lock:
            if cut not in self._heads:
                from edgeinfer.runtime import load

                path = self.root / "heads" / head_name(self.profile.model, cut)
                self._heads[cut] = load(path, threads=self.threads)
            return self._heads[cut]

    def runner(self, cut: int, tail: Any) -> SplitModel:
        """A :class:`SplitModel` for ``cut`` with ``tail`` (a RemoteModel of :meth:`tail_name`)."""
        from edgeinfer.split.runner import SplitModel

        restore = self.profile.compress_outputs is not None
        return SplitModel(self.head(cut), tail, self.profile.cut(cut), restore_outputs=restore)

    def options(
        self,
        remote_index: int,
        remote: LinkEstimates,
        *,
        local_s: float | None = None,
        remote_server_s: float | None = None,
        device: DeviceProfile | None = None,
        label: str = "",
        public_inputs: Collection[str] = (),
        compress_up: bool = False,
        compress_down: bool = False,
    ) -> list[Option]:
        """:func:`split_options` of this set: how the offloader asks for them."""
        return split_options(
            self, remote_index, remote, local_s=local_s, remote_server_s=remote_server_s,
            device=device, label=label, public_inputs=public_inputs, compress_up=compress_up,
            compress_down=compress_down,
        )  # fmt: skip

    def close(self) -> None:
        with self._lock:
            for head in self._heads.values():
                head.close()
            self._heads.clear()


def estimates_from(
    profile: SplitProfile,
    remote: LinkEstimates,
    *,
    local_s: float | None = None,
    remote_server_s: float | None = None,
    default: Estimates | None = None,
) -> Estimates:
    """Planner estimates from the offloader's: ``remote`` (RTT, bandwidth) and, to scale the
    profile, the expected local latency of the whole model ``local_s`` (device slowdown =
    it / the profile's local-only head time) and the server time of a whole-model remote
    call ``remote_server_s`` (server load = it / the profile's remote-only tail time)."""
    base = default or Estimates()
    local = next((c for c in profile.cuts if c.kind == "local"), None)
    whole = next((c for c in profile.cuts if c.kind == "remote"), None)
    slowdown = base.device_slowdown
    if local_s is not None and local is not None and local.head_ms > _MIN_MS:
        slowdown = max(local_s * 1e3 / local.head_ms, 1e-3)
    load = base.server_load
    if remote_server_s and whole is not None and whole.tail_ms > _MIN_MS:
        load = max(remote_server_s * 1e3 / whole.tail_ms, 1e-3)
    return base.measured(
        rtt_s=remote.rtt.value,
        up_bytes_per_s=remote.up_bw.value,
        down_bytes_per_s=remote.down_bw.value,
        device_slowdown=slowdown,
        server_load=load,
    )


def split_options(
    splits: SplitSet,
    remote_index: int,
    remote: LinkEstimates,
    *,
    local_s: float | None = None,
    remote_server_s: float | None = None,
    device: DeviceProfile | None = None,
    label: str = "",
    public_inputs: Collection[str] = (),
    compress_up: bool = False,
    compress_down: bool = False,
) -> list[Option]:
    """One policy option per split cut through remote ``remote_index``.

    ``sends_raw`` is set for a cut that carries model inputs other than ``public_inputs``
    (a transformer's cuts carry the attention mask; declare it public if the length of a
    text is not private), so private requests use only cuts that send features.

    Latency is ``None`` (unmeasured: a policy explores it) until the remote's bandwidth
    is known. Energy follows the offloader's device model: compute while the head runs,
    radio and waiting for the rest. ``compress_up``/``compress_down``: the transport
    compresses requests / answers, so cuts are costed by their compressed bytes.
    """
    power = device or DeviceProfile()
    measured = remote.up_bw.value is not None
    est = estimates_from(splits.profile, remote, local_s=local_s, remote_server_s=remote_server_s)
    options = []
    for cut in (c.over_wire(compress_up, compress_down) for c in splits.cuts):
        cost = cut_cost(cut, est)
        latency = cost.latency_ms / 1e3 if measured else None
        energy = None
        if latency is not None:
            rest_s = latency - cost.device_ms / 1e3
            energy = power.local_joules(cost.device_ms / 1e3) + power.remote_joules(
                rest_s, cut.bytes_up, cut.bytes_down
            )
        options.append(
            Option(
                Placement("split", remote_index, cut.index),
                latency,
                energy,
                remote.success,
                bool(set(cut.raw_inputs) - set(public_inputs)),
                f"{label}@cut{cut.index}" if label else f"cut {cut.index}",
            )
        )
    return options
