"""How much device energy a placement costs, and how much battery is left.

A :class:`DeviceProfile` is a small linear energy model of the device: whole-device power
while the CPU runs a model, power while it waits for a remote answer (CPU idle, radio on),
and radio energy per byte sent and received. Local runs cost ``compute_w x seconds``;
remote runs cost ``tx x bytes_up + rx x bytes_down + wait_w x seconds``. The defaults are
of the order of a phone on Wi-Fi; give the numbers of your device where you know them.
Joules computed here are a model, not a measurement.

The battery level comes from a callback if you give one (a device's own fuel gauge), else
from ``psutil.sensors_battery()`` where the operating system reports a battery. It is read
at most every ``refresh_s`` seconds, so asking for it per request is cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgeinfer.placement import DeviceProfile

__all__ = ["Battery", "DeviceProfile", "system_battery"]


def system_battery() -> float | None:
    """The battery charge in ``[0, 1]`` as the OS reports it; ``None`` on mains or unknown.

    A battery that is plugged in counts as unknown: energy is then not scarce.
    """
    try:
        import psutil
    except ImportError:  # psutil is optional: no battery information then
        return None
    try:
        info = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError):
        return None
    if info is None or info.power_plugged:
        return None
    return max(0.0, min(1.0, float(info.percent) / 100.0))


class Battery:
    """The battery level, read from ``source`` (default: the OS) at most every ``refresh_s``."""

    def __init__(
        self,
        source: Callable[[], float | None] | None = None,
        refresh_s: float = 10.0,  # seconds between reads
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source or system_battery
        self.refresh_s = refresh_s
        self._clock = clock
        self._value: float | None = None
        self._read_at = float("-inf")

    def level(self) -> float | None:
        """Charge in ``[0, 1]``, or ``None`` if unknown (no battery, or on mains)."""
        now = self._clock()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            value = self.source()
            self._value = None if value is None else max(0.0, min(1.0, float(value)))
        return self._value
