"""Measuring a candidate model: metrics, latency, size and memory, all through ``Model``.

:func:`evaluate` runs a model file over a :class:`~edgeinfer.optimize.data.Dataset` and
reports its metrics (task metrics against labels, fidelity against the original model's
outputs; see :mod:`edgeinfer.optimize.metrics`), the median latency of single-sample calls
on this machine, the file size and, optionally, the peak memory of a fresh process running
it. :func:`compare_latency` times several models side by side, round-robin, so that load
from other work on a shared machine hits them all alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.metrics import Metric, standard_metrics
from edgeinfer.runtime.bench import time_calls

__all__ = [
    "Evaluation",
    "compare_latency",
    "evaluate",
    "peak_memory",
    "predict_all",
    "time_calls",
]


@dataclass(frozen=True)
class Evaluation:
    """What one model measured."""

    metrics: Mapping[str, float]
    latency_ms: float  # median of single-sample calls through edgeinfer.Model
    latency_p90_ms: float
    size_bytes: int  # model file size
    memory_bytes: int | None = None  # peak RSS of a fresh process running it, minus baseline
    providers: tuple[str, ...] = ()
    eval_seconds: float = 0.0  # time spent measuring
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "latency_ms": round(self.latency_ms, 4),
            "latency_p90_ms": round(self.latency_p90_ms, 4),
            "size_bytes": self.size_bytes,
            "memory_bytes": self.memory_bytes,
            "providers": list(self.providers),
            "eval_seconds": round(self.eval_seconds, 3),
            **dict(self.extra),
        }


def predict_all(model: Any, data: Dataset, output: str, batch_size: int = 32) -> np.ndarray:
    """``output`` of ``model`` on every sample of ``data``, in batches."""
    parts = [model.predict(feeds, outputs=[output])[output] for feeds in data.batches(batch_size)]
    return np.concatenate(parts) if parts else np.empty((0,))


def _output_name(model: Any, output: str | None) -> str:
    names: list[str] = [s.name for s in model.outputs]
    if output is None:
        return names[0]
    if output not in names:
        raise InputError(f"output {output!r} not found; the model has {', '.join(names)}")
    return output


def evaluate(
    path: str | os.PathLike[str],
    data: Dataset,
    metric: Metric,
    *,
    output: str | None = None,
    reference: np.ndarray | None = None,
    threads: int | None = None,
    providers: str | Sequence[str] = ("cpu",),
    repeats: int = 30,
    batch_size: int = 32,
    memory: bool = False,
    self_reference: bool = False,
) -> tuple[Evaluation, np.ndarray]:
    """Measure the model at ``path`` on ``data``; returns the evaluation and its outputs.

    ``reference``: the original model's outputs on the same data (for fidelity metrics);
    ``self_reference``: this *is* the original (fidelity metrics against itself).
    """
    from edgeinfer.runtime.model import load

    if len(data) == 0:
        raise InputError("eval data is empty")
    start = time.perf_counter()
    model = load(
        path,
        providers=list(providers) if not isinstance(providers, str) else providers,
        threads=threads,
    )
    try:
        name = _output_name(model, output)
        outputs = predict_all(model, data, name, batch_size)
        if self_reference:
            reference = outputs
        metrics = standard_metrics(metric, outputs, labels=data.labels, reference=reference)
        times = time_calls(model, data.sample(0), max(1, repeats))
        used = model.providers
    finally:
        model.close()
    mem = peak_memory(path, data.sample(0), threads) if memory else None
    evaluation = Evaluation(
        metrics=metrics,
        latency_ms=float(np.median(times)),
        latency_p90_ms=float(np.percentile(times, 90)),
        size_bytes=Path(path).stat().st_size,
        memory_bytes=mem,
        providers=tuple(used),
        eval_seconds=time.perf_counter() - start,
    )
    return evaluation, outputs


def compare_latency(
    paths: Sequence[str | os.PathLike[str]],
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
    rounds: int = 40,
    providers: str | Sequence[str] = ("cpu",),
) -> list[float]:
    """Median latency (ms) of each model, timed round-robin in one process."""
    from edgeinfer.runtime.model import load

    models = [
        load(
            p,
            providers=providers if isinstance(providers, str) else list(providers),
            threads=threads,
        )
        for p in paths
    ]
    try:
        for m in models:
            time_calls(m, feeds, 0, warmup=3)
        samples: list[list[float]] = [[] for _ in models]
        order = list(range(len(models)))
        for r in range(rounds):
            # A B C, then C B A: a slow drift of the machine favours no one.
            for i in order if r % 2 == 0 else order[::-1]:
                samples[i].extend(time_calls(models[i], feeds, 1, warmup=0))
    finally:
        for m in models:
            m.close()
    return [float(np.median(s)) for s in samples]


# ru_maxrss survives exec (a child starts with its parent's peak), so the probe reads the
# peak of its own address space (VmHWM) where Linux offers it.
_PROBE = """
import resource, sys, numpy as np
path, feeds_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
import edgeinfer, onnxruntime
if path != "-":
    with np.load(feeds_path) as z:
        feeds = {k: z[k] for k in z.files}
    model = edgeinfer.load(path, providers=["cpu"], threads=threads or None)
    for _ in range(3):
        model.predict(feeds)
try:
    with open("/proc/self/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM:")][0].split()[1]
except (OSError, IndexError):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(hwm)
"""
_baseline: dict[str, int] = {}


def _probe(path: str, feeds_path: str, threads: int | None) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, path, feeds_path, str(threads or 0)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise InputError(f"memory probe of {path} failed: {result.stderr.strip()[-300:]}")
    return int(lines[-1]) * 1024  # ru_maxrss is in KiB on Linux


def peak_memory(
    path: str | os.PathLike[str], feeds: Mapping[str, np.ndarray], threads: int | None = None
) -> int | None:
    """Peak resident memory (bytes) a fresh Python process adds by loading the model and
    running it on ``feeds``, over one that only imports edgeinfer and ONNX Runtime.
    ``None`` where the platform cannot say (no ``resource`` module)."""
    try:
        import resource  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        return None
    with tempfile.TemporaryDirectory(prefix="edgeinfer-mem-") as tmp:
        feeds_path = os.path.join(tmp, "feeds.npz")
        np.savez(feeds_path, **dict(feeds))  # type: ignore[arg-type]
        if "base" not in _baseline:
            _baseline["base"] = _probe("-", feeds_path, threads)
        used = _probe(os.fspath(path), feeds_path, threads)
    return max(0, used - _baseline["base"])
