"""The offloader's split placements: head on the device, tail on one of its remotes.

:class:`SplitPlacements` wraps a :class:`~edgeinfer.split.placements.SplitSet` (the device
side of a directory written by ``edgeinfer split``) for the
:class:`~edgeinfer.offload.Offloader`: per remote whose breaker is closed it lists one
policy option per cut, costed by the split planner from the remote's live estimates and
the local model's (:meth:`~edgeinfer.split.placements.SplitSet.options`), and it runs the
cut a policy picked. The offloader takes the set as a :class:`SplitCuts`, what it needs of
one, so ``offload`` does not import ``split`` (``split`` runs its tails with this
package's :class:`RemoteModel`: the arrow points one way). A tail is a :class:`RemoteModel`
of the remote's server (same transport and token) under the tail's model name.

Privacy: an option whose cut carries a model input (other than ``public_inputs``) is
marked ``sends_raw``, so :func:`~edgeinfer.offload.policy.decide` keeps private requests
off it; the run itself refuses such a cut for a private request again (two locks, one
door). Cuts that send only features stay open to private requests.

A split call teaches the remote's estimates about the link (RTT, bandwidth, success) and
records its own per-cut signature, without blurring the whole model's extrapolations.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.offload.estimate import Signature
from edgeinfer.offload.remote import RemoteModel
from edgeinfer.placement import DeviceProfile, LinkEstimates, Option

if TYPE_CHECKING:
    from edgeinfer.offload.pool import RemoteSlot
    from edgeinfer.offload.transport import CallStats

__all__ = ["SplitAnswer", "SplitCuts", "SplitPlacements", "cut_signature"]


class _Cut(Protocol):
    @property
    def index(self) -> int: ...


class SplitCuts(Protocol):
    """What the offloader needs of a split package: :class:`~edgeinfer.split.SplitSet` is one.

    ``options`` costs each cut through one remote (see
    :func:`~edgeinfer.split.placements.split_options`); ``runner`` gives what runs a cut
    with a tail (a :class:`RemoteModel`): its ``infer`` answers a
    :class:`~edgeinfer.split.runner.SplitResult`.
    """

    @property
    def root(self) -> Path: ...

    @property
    def cuts(self) -> Sequence[_Cut]: ...

    def tail_name(self, cut: int) -> str: ...

    def runner(self, cut: int, tail: Any) -> Any: ...

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
    ) -> list[Option]: ...


def cut_signature(sig: Signature, cut: int) -> Signature:
    """The estimate key of a split call: the request's shapes, tagged with the cut (a
    negative leading dimension, which no real shape has, so it never meets a whole call)."""
    return ((-1, cut), *sig)


@dataclass(frozen=True, slots=True)
class SplitAnswer:
    """One answered split call, as the offloader accounts for it."""

    outputs: dict[str, np.ndarray]
    head_s: float  # seconds the head ran on the device
    remote_s: float  # seconds of the tail call, transfer included
    up_bytes: int
    down_bytes: int
    stats: CallStats | None  # the tail call's own account


class SplitPlacements:
    """Split cuts through the offloader's remotes: options to decide on, and runs."""

    def __init__(self, split: SplitCuts, public_inputs: Collection[str] = ()) -> None:
        if isinstance(split, (str, os.PathLike)):
            raise InputError(
                f"split {os.fspath(split)!r}: expected a SplitSet, not a path; open the "
                "directory with edgeinfer.split.SplitSet.open(path)"
            )
        self.set = split  # the caller's: closed by the caller
        self.public_inputs = frozenset(public_inputs)
        self._tails: dict[tuple[int, int], RemoteModel] = {}
        self._last: dict[tuple[int, int], float] = {}  # (remote, cut) -> last answered
        self._lock = threading.Lock()

    @property
    def cuts(self) -> tuple[int, ...]:
        return tuple(c.index for c in self.set.cuts)

    def options(
        self,
        slot: RemoteSlot,
        sig: Signature,
        *,
        local_s: float | None,
        device: DeviceProfile,
        now: float,
    ) -> list[Option]:
        """One option per cut through ``slot`` (latency ``None`` until its link is measured)."""
        options = self.set.options(
            slot.index, slot.est, local_s=local_s,
            remote_server_s=slot.est.server_s(sig), device=device, label=slot.label,
            public_inputs=self.public_inputs, compress_up=slot.remote.compress is not None,
            compress_down=slot.remote.transport_name == "http",
        )  # fmt: skip
        last = self._last
        return [
            replace(o, age_s=now - last.get((slot.index, o.placement.cut or 0), float("-inf")))
            for o in options
        ]

    def tail(self, slot: RemoteSlot, cut: int) -> RemoteModel:
        """The tail of ``cut`` on ``slot``'s server (made once, then reused)."""
        key = (slot.index, cut)
        with self._lock:
            tail = self._tails.get(key)
            if tail is None:
                tail = self._tails[key] = slot.remote.with_model(self.set.tail_name(cut))
            return tail

    def run(
        self,
        slot: RemoteSlot,
        cut: int,
        arrays: dict[str, np.ndarray],
        outputs: Sequence[str] | None,
        *,
        private: bool,
        timeout: float,
    ) -> SplitAnswer:
        """Head here, tail on ``slot``; raises :class:`RemoteError` when the tail fails."""
        guarded: bool | Collection[str] = (
            sorted(set(arrays) - self.public_inputs) if private else False
        )
        result = self.set.runner(cut, self.tail(slot, cut)).infer(
            arrays, outputs, private=guarded, timeout=timeout
        )
        self._last[(slot.index, cut)] = time.perf_counter()
        return SplitAnswer(
            result.outputs, result.head_s, result.remote_s, result.up_bytes, result.down_bytes,
            result.stats,
        )  # fmt: skip

    def close(self) -> None:
        with self._lock:
            tails, self._tails = list(self._tails.values()), {}
        for tail in tails:
            tail.close()
