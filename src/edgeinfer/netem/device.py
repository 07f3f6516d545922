"""The device-side counterpart of the link emulator: a model made to look slower."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeinfer.errors import InputError

__all__ = ["EmulatedClient", "EmulatedDevice"]


class _Slowed:
    """Wraps ``inner`` for a device ``slowdown`` times slower; everything else is inner's."""

    def __init__(self, inner: Any, slowdown: float) -> None:
        if slowdown < 1.0:
            raise InputError(f"slowdown {slowdown!r} must be >= 1 (this machine is the fastest)")
        self._inner = inner
        self.slowdown = float(slowdown)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r}, slowdown={self.slowdown:g})"

    def _slow_down(self, seconds: float) -> None:
        """Sleep so that ``seconds`` of this machine's work took ``slowdown`` times as long."""
        if self.slowdown > 1.0 and seconds > 0:
            time.sleep(seconds * (self.slowdown - 1.0))


class EmulatedDevice(_Slowed):
    """A local model made to look ``slowdown`` times slower: emulation, not measurement.

    Each ``predict`` runs the real model, then sleeps ``(slowdown - 1)`` times as long as
    the run took, so latency (and the compute time an energy model charges for) is that of
    a device ``slowdown`` times slower than this machine. Everything else is the model's.
    """

    def __init__(self, model: Any, slowdown: float = 1.0) -> None:
        super().__init__(model, slowdown)
        self.model = model

    def predict(self, inputs: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        result: dict[str, np.ndarray] = self.model.predict(inputs, outputs)
        self._slow_down(time.perf_counter() - start)
        return result


class EmulatedClient(_Slowed):
    """A remote model called from a device ``slowdown`` times slower than this machine.

    The network is the link emulator's and the server is the server's, but the client's own
    CPU work in a call (HTTP compression and decompression, ``stats.codec_s``) would also
    run slower on the device: after each ``infer`` it sleeps ``(slowdown - 1)`` times that
    long. ``stats`` stay as measured, so what a learner reads as network time is unchanged.
    """

    def __init__(self, remote: Any, slowdown: float = 1.0) -> None:
        super().__init__(remote, slowdown)
        self.remote = remote

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        result = self.remote.infer(*args, **kwargs)
        self._slow_down(float(getattr(result.stats, "codec_s", 0.0) or 0.0))
        return result

    def predict(self, inputs: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = self.infer(inputs, outputs).outputs
        return result
