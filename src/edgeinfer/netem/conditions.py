"""Link conditions for the emulator: parsing of durations, rates and addresses, the
:class:`Conditions` a link has, and the :class:`NetemStats` it keeps."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from edgeinfer.errors import InputError

__all__ = [
    "Conditions",
    "NetemStats",
    "OutageMode",
    "parse_address",
    "parse_duration",
    "parse_rate",
]

OutageMode = Literal["blackhole", "refuse"]

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(us|ms|s|m)\s*$", re.I)
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)bit(?:/s)?\s*$", re.I)
_RATE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def _quantity(
    value: str | float, what: str, pattern: re.Pattern[str], units: dict[str, float], expected: str
) -> float:
    """A number as is, or a number with a unit that ``pattern`` and ``units`` read."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = pattern.match(str(value))
    if not m:
        raise InputError(f"{what} {value!r} not understood; expected {expected}")
    return float(m.group(1)) * units[m.group(2).lower()]


def parse_duration(value: str | float, what: str = "duration") -> float:
    """Seconds from ``"50ms"``, ``"2s"``, ``"250us"`` or a number of seconds."""
    expected = "a number with a unit, such as '50ms', '2s' or '250us'"
    seconds = _quantity(value, what, _DURATION, _DURATION_UNITS, expected)
    if seconds < 0:
        raise InputError(f"{what} {value!r} is negative; expected a time >= 0")
    return seconds


def parse_rate(value: str | float | None, what: str = "rate") -> float | None:
    """Bits per second from ``"10mbit"``, ``"500kbit"``, ``"1gbit"`` or a number (bit/s).

    ``None`` (or ``"0"``/``0``) means unlimited.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip() in ("0", "none", "unlimited"):
        return None
    expected = "bits per second with a unit, such as '10mbit', '500kbit' or '1gbit'"
    bits = _quantity(value, what, _RATE, _RATE_UNITS, expected)
    if bits < 0:
        raise InputError(f"{what} {value!r} is negative; expected bits per second > 0")
    return bits or None


def parse_address(value: str | tuple[str, int]) -> tuple[str, int]:
    """``("127.0.0.1", 8000)`` from ``"127.0.0.1:8000"`` (or a pair, checked)."""
    if isinstance(value, tuple):
        host, port = value
    else:
        host, sep, port_text = str(value).rpartition(":")
        if not sep or not port_text.isdigit():
            raise InputError(f"address {value!r} not understood; expected HOST:PORT")
        port = int(port_text)
    host = host.strip("[]") or "127.0.0.1"
    if not 0 <= int(port) <= 65535:
        raise InputError(f"port {port} is out of range; expected 0..65535")
    return host, int(port)


@dataclass(frozen=True)
class Conditions:
    """What the emulated link does to traffic. Change them live with :meth:`NetemProxy.set`."""

    rtt: float = 0.0  # seconds added to a round trip (half each way)
    jitter: float = 0.0  # seconds: each chunk's one-way delay varies by up to +- this
    rate_up: float | None = None  # bits/s client -> server; None: unlimited
    rate_down: float | None = None  # bits/s server -> client; None: unlimited
    loss: float = 0.0  # probability per forwarded chunk that the connection is reset
    burst: int = 1500  # bytes the token bucket lets through at once (one packet)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise InputError(f"loss {self.loss!r} is not a probability; expected 0..1")
        if self.burst < 1:
            raise InputError(f"burst {self.burst!r} must be at least 1 byte")

    @classmethod
    def of(cls, base: Conditions | None = None, **changes: Any) -> Conditions:
        """``base`` with ``changes``, parsing strings (``rtt="50ms"``, ``rate="10mbit"``).

        ``rate`` sets both directions; ``rate_up``/``rate_down`` set one.
        """
        unknown = set(changes) - {"rtt", "jitter", "rate", "rate_up", "rate_down", "loss", "burst"}
        if unknown:
            raise InputError(
                f"unknown link condition(s) {', '.join(sorted(unknown))}; expected rtt, "
                "jitter, rate, rate_up, rate_down, loss or burst"
            )
        fields: dict[str, Any] = {}
        for key in ("rtt", "jitter"):
            if key in changes:
                fields[key] = parse_duration(changes[key], key)
        if "rate" in changes:
            fields["rate_up"] = fields["rate_down"] = parse_rate(changes["rate"], "rate")
        for key in ("rate_up", "rate_down"):
            if key in changes:
                fields[key] = parse_rate(changes[key], key)
        if "loss" in changes:
            fields["loss"] = float(changes["loss"])
        if "burst" in changes:
            fields["burst"] = int(changes["burst"])
        return replace(base or cls(), **fields)


@dataclass
class NetemStats:
    """What went through the proxy since it started."""

    connections: int = 0  # accepted from clients
    bytes_up: int = 0  # client -> server, delivered
    bytes_down: int = 0  # server -> client, delivered
    resets: int = 0  # connections killed by loss or a "refuse" outage
