"""Measuring a model on this machine: cold start, latency percentiles, throughput, memory.

Used by ``edgeinfer bench`` and the benchmarks. Latencies are wall-clock per call through
:class:`~edgeinfer.runtime.model.Model`, after warm-up; percentiles are over all timed
calls. Latency depends on input sizes, so the result records the shapes it timed, and random
inputs are only made where every size is known: a fixed dim, the batch axis, or one the
caller names in ``dims``; otherwise :class:`~edgeinfer.errors.InputError` lists what is
missing instead of timing a guess. Peak RSS is the process's high-water mark
(``getrusage``), so it includes whatever the process held before.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeinfer.runtime.model import Model, load
from edgeinfer.tensors import TensorSpec, dtype_from_numpy

__all__ = ["MIN_CALLS", "SLOW_CALL_S", "BenchResult", "bench", "peak_rss_mb", "time_calls"]

MIN_CALLS = 5  # timed calls at the least, however short the time asked for
SLOW_CALL_S = 1.0  # calls slower than this are reported as they complete (s)


def time_calls(
    model: Any, feeds: Mapping[str, np.ndarray], repeats: int, warmup: int = 3
) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls of ``model.predict(feeds)``."""
    for _ in range(warmup):
        model.predict(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


@dataclass(frozen=True)
class BenchResult:
    model: str
    providers: tuple[str, ...]
    threads: int | None
    batch: int
    load_s: float  # opening + verifying + creating the session
    first_inference_s: float  # the first predict after load
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    calls: int
    throughput_per_s: float  # samples per second, serial calls
    concurrent_throughput_per_s: float | None  # samples per second with `concurrency` threads
    concurrency: int
    peak_rss_mb: float
    inputs: tuple[TensorSpec, ...] = ()  # what was timed: concrete shapes

    @property
    def cold_start_s(self) -> float:
        return self.load_s + self.first_inference_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["cold_start_s"] = self.cold_start_s
        return d


def bench(
    path: str | os.PathLike[str],
    *,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    threads: int | None = None,
    providers: str | Sequence[str] | None = "auto",
    fallback: bool = False,
    warmup: int = 5,
    min_calls: int = MIN_CALLS,
    min_seconds: float = 2.0,
    concurrency: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Load ``path`` and time it on ``inputs``, or on random inputs of the signature's shapes.

    ``dims`` sizes the dynamic dims (``{"sequence": 128}``, ``{"x.2": 48}`` for an unnamed
    one, see :func:`~edgeinfer.runtime.model.sample_shapes`); ``batch`` sizes a dynamic
    first axis. Timing stops after ``min_calls`` calls or ``min_seconds``, whichever comes
    later, so a slow model is not held to many calls; warm-up also stops once it has taken
    ``min_seconds`` (after one call). ``progress`` is told of every call slower than
    :data:`SLOW_CALL_S`, so a long run is never silent.
    """
    t0 = time.perf_counter()
    model: Model = load(path, threads=threads, providers=providers, fallback=fallback)
    t1 = time.perf_counter()
    try:
        feeds = (
            dict(inputs) if inputs is not None else model.sample_inputs(batch, dims, strict=True)
        )
        feeds = model.validate(feeds)
    except BaseException:
        model.close()
        raise
    model.predict(feeds)
    t2 = time.perf_counter()

    def report(what: str, seconds: float) -> None:
        if progress is not None and seconds > SLOW_CALL_S:
            progress(f"{what} took {seconds:,.1f} s")

    report("first inference", t2 - t1)
    w0 = time.perf_counter()
    for i in range(warmup):
        a = time.perf_counter()
        model.predict(feeds)
        report(f"warm-up call {i + 1}/{warmup}", time.perf_counter() - a)
        if time.perf_counter() - w0 >= min_seconds:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        a = time.perf_counter()
        model.predict(feeds)
        times.append(time.perf_counter() - a)
        report(f"timed call {len(times)} (at least {min_calls})", times[-1])
        if len(times) >= 100_000:
            break
    arr = np.array(times) * 1e3
    first = next(iter(feeds.values()))
    n = int(first.shape[0]) if first.ndim else 1
    concurrent = None
    if concurrency > 1:
        per_thread = max(10, len(times) // concurrency)

        def worker(_: int) -> None:
            for _ in range(per_thread):
                model.predict(feeds)

        c0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
        concurrent = n * per_thread * concurrency / (time.perf_counter() - c0)
    result = BenchResult(
        model=model.name,
        providers=model.providers,
        threads=threads,
        batch=n,
        load_s=t1 - t0,
        first_inference_s=t2 - t1,
        p50_ms=float(np.percentile(arr, 50)),
        p90_ms=float(np.percentile(arr, 90)),
        p99_ms=float(np.percentile(arr, 99)),
        mean_ms=float(arr.mean()),
        calls=len(times),
        throughput_per_s=n * len(times) / float(np.sum(times)),
        concurrent_throughput_per_s=concurrent,
        concurrency=concurrency,
        peak_rss_mb=peak_rss_mb(),
        inputs=tuple(
            TensorSpec(k, dtype_from_numpy(v.dtype).name, v.shape) for k, v in feeds.items()
        ),
    )
    model.close()
    return result
