"""Latency and drift as Apache DataSketches KLL quantile sketches.

A device summarizes what it measured (inference latency in ms, or one input feature or
output for drift) in a KLL sketch: a few kilobytes whatever the count, with a known rank
error (about 1.65 % at k=200), and *mergeable*, so the service adds one device's sketch to
the running one of its (model, version, hardware class, metric) without ever seeing a raw
value. The report carries :func:`encode`'s base64; the service :func:`decode`\\ s and merges.

``datasketches``' C++ parser is not safe on untrusted bytes (a truncated sketch can crash
the process), so the service never parses a device's sketch itself: :class:`Sandbox` hands
it to a child process that parses it, merges it into an empty sketch, reads its quantiles
and sends back its own serialization. A crash there refuses one report (``BadReport``) and
the next sketch gets a new child; the service only ever parses bytes that child wrote.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from edgeinfer.fleet.errors import BadReport, FleetUnavailable
from edgeinfer.fleet.reports import b64decode, b64encode

__all__ = ["K", "Sandbox", "encode", "make", "merge", "quantiles"]

K = 200  # KLL accuracy parameter: ~1.65 % normalized rank error, ~3 kB serialized


def _kll() -> Any:
    import datasketches

    return datasketches.kll_doubles_sketch


def make(values: Iterable[float], k: int = K) -> Any:
    """A KLL sketch of ``values`` (device side)."""
    sketch = _kll()(k)
    for v in values:
        sketch.update(float(v))
    return sketch


def encode(sketch: Any) -> str:
    return b64encode(bytes(sketch.serialize()))


def load(raw: bytes) -> Any:
    """A sketch this service wrote (never a device's bytes: see :class:`Sandbox`)."""
    return _kll().deserialize(raw)


def _header_ok(raw: bytes) -> str | None:
    """Why ``raw`` cannot be a KLL doubles sketch, from its 8-byte preamble (or ``None``)."""
    if len(raw) < 8:
        return f"{len(raw)} bytes, shorter than a KLL preamble"
    preamble_ints, serial, family, flags, m = raw[0], raw[1], raw[2], raw[3], raw[6]
    if family != 15:
        return f"family {family}, expected 15 (KLL)"
    if serial not in (1, 2) or preamble_ints not in (2, 5) or m != 8:
        return "an unknown KLL serial layout"
    if len(raw) < preamble_ints * 4:
        return "truncated preamble"
    if not flags & 1 and preamble_ints == 5 and len(raw) < 20 + 4 * raw[18] + 16:
        return "truncated levels"
    return None


def _check(raw: bytes) -> tuple[bytes, int]:
    """Parse, exercise and re-serialize an untrusted sketch (runs in the sandbox child)."""
    why = _header_ok(raw)
    if why is not None:
        raise ValueError(why)
    sketch = _kll().deserialize(raw)
    fresh = _kll()(sketch.k)
    fresh.merge(sketch)
    if not fresh.is_empty():
        lo, hi = fresh.get_min_value(), fresh.get_max_value()
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError("its minimum and maximum are not finite numbers")
        fresh.get_quantiles([0.0, 0.5, 0.95, 1.0])
    return bytes(fresh.serialize()), int(fresh.n)


def _follow_parent(parent: int) -> None:
    """In each child: exit when the service is gone (a SIGKILLed service cannot stop its
    children, and they would hold its stdout and wait for work forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def _check_in_child(raw: bytes) -> tuple[bytes, int] | str:
    try:
        return _check(raw)
    except Exception as exc:  # every refusal goes back as text
        return str(exc) or type(exc).__name__


class Sandbox:
    """Child processes that parse devices' sketches, so a crash there is one refusal.

    ``check(text)`` returns the sketch as this service's own serialization, and its count.
    Thread-safe; the children start on first use, and again after one dies.
    """

    def __init__(self, timeout_s: float = 30.0, workers: int = 2) -> None:
        self.timeout_s = timeout_s  # seconds a sketch may wait and take to parse
        self.workers = workers  # child processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the service runs threads, and a forked copy of them is unsafe
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_follow_parent,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def check(self, text: str, what: str = "sketch") -> tuple[bytes, int]:
        """The sketch re-serialized by the child, and its count; ``BadReport`` if it is not
        one. A crash is tried once more in a new child before it counts against this
        sketch (the crash may have been another request's); a child too busy to answer
        within ``timeout_s`` is ``FleetUnavailable`` (the device sends it again later)."""
        raw = b64decode(text, what)
        why = _header_ok(raw)
        for attempt in range(2):
            if why is not None:
                break
            pool = self._executor()
            try:
                result = pool.submit(_check_in_child, raw).result(self.timeout_s)
            except BrokenProcessPool:
                self._discard(pool)
                why = None if attempt == 0 else "the sketch parser crashed on it"
                continue
            except TimeoutError:
                self._discard(pool)
                raise FleetUnavailable(
                    "the sketch parser is busy; send the report again later"
                ) from None
            if not isinstance(result, str):
                return result
            why = result
        raise BadReport(f"{what}: not a KLL doubles sketch ({why})")

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def merge(stored: bytes | None, checked: bytes) -> bytes:
    """A checked sketch (:meth:`Sandbox.check`) merged into the stored one (``None``: first)."""
    incoming = load(checked)
    if stored is None:
        return checked
    base = load(stored)
    base.merge(incoming)
    return bytes(base.serialize())


def quantiles(raw: bytes, ranks: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` of a stored sketch (empty: ``{}``)."""
    sketch = load(raw)
    if sketch.is_empty():
        return {}
    return {f"p{round(r * 100):d}": float(sketch.get_quantile(r)) for r in ranks}
