"""Shared helpers for the benchmarks: interleaved timing, medians, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def per_call_s(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(
    fns: dict[str, Callable[[], object]], *, calls: int, repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Per-call seconds of each function, blocks interleaved (A B A B ...) over repeats.

    Alternating the order inside each round keeps slow drifts of a shared machine from
    favouring whichever runs first.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            out[name].append(per_call_s(fns[name], calls))
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path
