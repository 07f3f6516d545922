"""Sweep placement policies over emulated network and device conditions.

``edgeinfer offload-bench`` and ``benchmarks/bench_offload.py`` use this: an edge server
runs in its own process (so the device side and the server never share an interpreter
lock), a :class:`~edgeinfer.netem.NetemProxy` sits in front of it, and for each condition
(RTT x bandwidth x device slowdown) every round runs, interleaved so that all see the same
machine load: the model always on the device, always on the server, and through one
:class:`Offloader` per policy. The oracle of a condition is the better of the two static
placements measured there. Device slowdown is emulated (:class:`~edgeinfer.netem.EmulatedDevice`);
joules come from the :class:`DeviceProfile` energy model, not a power meter.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import EdgeInferError
from edgeinfer.netem import EmulatedDevice, NetemProcess, NetemProxy
from edgeinfer.offload.energy import DeviceProfile
from edgeinfer.offload.offloader import Offloader, OffloaderConfig
from edgeinfer.offload.remote import RemoteModel

__all__ = [
    "CellResult",
    "Condition",
    "EdgeServerProcess",
    "Workload",
    "edge",
    "run_cell",
    "sweep",
]


@dataclass(frozen=True)
class Workload:
    """A model and one request's inputs."""

    name: str  # the model's name on the server (letters, digits, - and _)
    model_path: Path  # an .onnx file, served and run locally
    inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class Condition:
    """One network and device condition."""

    rtt_s: float  # seconds of round-trip time added by the emulated link
    rate_bits: float | None  # bits/s each way; None: unlimited
    slowdown: float  # the device is this many times slower than this machine (emulated)

    def label(self) -> str:
        rate = "inf" if self.rate_bits is None else f"{self.rate_bits / 1e6:g}"
        return f"{self.rtt_s * 1e3:g}ms/{rate}Mbit/{self.slowdown:g}x"


@dataclass
class CellResult:
    """What one workload did under one condition."""

    workload: str
    rtt_ms: float
    rate_mbit: float | None
    slowdown: float
    rounds: int
    mean_ms: dict[str, float] = field(default_factory=dict)  # per placement/policy
    p50_ms: dict[str, float] = field(default_factory=dict)
    joules: dict[str, float] = field(default_factory=dict)  # mean modelled J per inference
    remote_share: dict[str, float] = field(default_factory=dict)  # policies: share remote
    decision_us_p50: float = 0.0
    oracle: str = ""  # "local" or "remote": the better static placement here
    oracle_ms: float = 0.0
    ratio: dict[str, float] = field(default_factory=dict)  # mean / oracle
    p50_ratio: dict[str, float] = field(default_factory=dict)  # median / oracle's median
    agreement: dict[str, float] = field(default_factory=dict)  # share placed as the oracle
    failures: int = 0  # predictions that raised (should be 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def workload(spec: str, *, seq_len: int = 32, batch: int = 1) -> Workload:
    """A workload by name (``"digits"``, ``"minilm"``) or from an ONNX file (random inputs)."""
    import re

    if spec == "digits":
        from edgeinfer.zoo import digits

        x = digits.load_data()[2][:batch]
        return Workload("digits", digits.model_path(), {"pixels": x})
    if spec == "minilm":
        from edgeinfer.zoo import minilm

        feeds = minilm.tokenize(minilm.sentences(batch), seq_len=seq_len)
        return Workload("minilm", minilm.export(), dict(feeds))
    path = Path(spec)
    if not path.is_file() or path.suffix.lower() != ".onnx":
        raise EdgeInferError(
            f"model {spec!r}: expected 'digits', 'minilm' or the path of an .onnx file"
        )
    from edgeinfer.runtime import load

    with load(path, providers=["cpu"]) as m:
        inputs = m.sample_inputs(batch=batch)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", path.stem) or "model"
    return Workload(name, path, inputs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EdgeServerProcess:
    """``edgeinfer serve`` in a child process over a repository of the given models."""

    def __init__(self, models: dict[str, Path], threads: int = 1, ready_s: float = 120.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeinfer-edge-")
        root = Path(self._tmp.name)
        for name, path in models.items():
            dest = root / name / "1" / "model.onnx"
            dest.parent.mkdir(parents=True)
            os.symlink(Path(path).resolve(), dest)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "edgeinfer", "serve", str(root), "--port", str(self.port),
               "--grpc-port", "-1", "--threads", str(threads), "--poll", "0"]  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._wait_ready(ready_s)

    def _wait_ready(self, seconds: float) -> None:
        import httpx

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read() if self._proc.stderr else ""
                raise EdgeInferError(f"the edge server exited at start: {err[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.close()
        raise EdgeInferError(f"the edge server did not become ready within {seconds:.0f} s")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._tmp.cleanup()

    def __enter__(self) -> EdgeServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mean_ms(values: Sequence[float]) -> float:
    return 1e3 * statistics.fmean(values) if values else float("nan")


def _p50_ms(values: Sequence[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


STATIC = ("local", "remote")  # the static placements; the oracle is the better of the two


def run_cell(
    workload: Workload,
    local: Any,
    proxy: NetemProxy | NetemProcess,
    cond: Condition,
    policies: Sequence[str],
    rounds: int,
    *,
    device: DeviceProfile,
    config: OffloaderConfig,
    warmup: int = 2,
    min_seconds: float = 0.0,
    max_rounds: int | None = None,
    slice_s: float = 0.05,
    max_calls: int = 200,
    max_cell_s: float | None = None,
) -> CellResult:
    """Measure one workload under one condition (the proxy must point at the server).

    Every placement runs through an :class:`Offloader` (static ones with the ``local`` and
    ``remote`` policies), so all pay the same per-request machinery and the comparison is
    of decisions. Rounds interleave the placements; in a round each placement runs for a
    slice of ``slice_s`` seconds (at least one call, at most ``max_calls``), so cheap
    placements get many samples. More rounds are run, up to ``max_rounds``, while the cell
    has taken less than ``min_seconds``; fewer (but at least three) once it has taken
    ``max_cell_s``. The garbage collector is off while rounds run (as ``timeit`` does).
    """
    proxy.set(rtt=cond.rtt_s, rate=cond.rate_bits)
    slow = EmulatedDevice(local, cond.slowdown)
    names = list(dict.fromkeys([*STATIC, *policies]))
    offloaders = {
        p: Offloader(slow, [RemoteModel(proxy.url, workload.name)], p, device=device, config=config)
        for p in names
    }
    lat: dict[str, list[float]] = {k: [] for k in names}
    joules: dict[str, list[float]] = {k: [] for k in names}
    remote_hits = dict.fromkeys(names, 0)
    decisions: list[float] = []
    failures = 0
    x = workload.inputs
    limit = max_rounds or rounds
    done = 0
    rng = random.Random(0)
    try:
        for name, off in offloaders.items():
            if name in STATIC:
                off.predict(x)  # connection, metadata, first run: not measured
            else:
                off.calibrate(x, runs=warmup)
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        order = list(offloaders.items())

        def more() -> bool:
            spent = time.perf_counter() - start
            if done >= 3 and max_cell_s is not None and spent > max_cell_s:
                return False  # an expensive cell: three rounds are enough
            return done < rounds or (done < limit and spent < min_seconds)

        while more():
            done += 1
            rng.shuffle(order)  # no placement always runs right after another
            for name, off in order:
                t_end = time.perf_counter() + slice_s
                for _ in range(max_calls):  # a slice: one call, or more while cheap
                    try:
                        p = off.predict(x)
                    except EdgeInferError:
                        failures += 1
                        break
                    lat[name].append(p.latency_s)
                    joules[name].append(p.energy_j)
                    remote_hits[name] += p.placement == "remote"
                    if name not in STATIC:
                        decisions.append(p.decision_s)
                    if time.perf_counter() >= t_end:
                        break
    finally:
        gc.enable()
        for off in offloaders.values():
            off.close()
    res = CellResult(
        workload.name,
        cond.rtt_s * 1e3,
        None if cond.rate_bits is None else cond.rate_bits / 1e6,
        cond.slowdown,
        done,
        failures=failures,
    )
    for k, v in lat.items():
        res.mean_ms[k] = _mean_ms(v)
        res.p50_ms[k] = _p50_ms(v)
        res.joules[k] = statistics.fmean(joules[k]) if joules[k] else float("nan")
        res.remote_share[k] = remote_hits[k] / max(len(v), 1)
    res.decision_us_p50 = 1e6 * statistics.median(decisions) if decisions else float("nan")
    res.oracle = "local" if res.mean_ms["local"] <= res.mean_ms["remote"] else "remote"
    res.oracle_ms = res.mean_ms[res.oracle]
    res.ratio = {k: v / res.oracle_ms for k, v in res.mean_ms.items()}
    res.p50_ratio = {k: v / res.p50_ms[res.oracle] for k, v in res.p50_ms.items()}
    oracle_share = 1.0 if res.oracle == "remote" else 0.0
    res.agreement = {k: 1.0 - abs(v - oracle_share) for k, v in res.remote_share.items()}
    return res


@contextlib.contextmanager
def edge(
    models: dict[str, Path], threads: int = 1
) -> Iterator[tuple[EdgeServerProcess, NetemProcess]]:
    """A server process with a netem proxy (in its own process too) in front of it."""
    with EdgeServerProcess(models, threads=threads) as server, NetemProcess(server.address) as px:
        yield server, px


def sweep(
    workloads: Sequence[Workload],
    conditions: Sequence[Condition],
    policies: Sequence[str] = ("latency", "energy"),
    rounds: int = 8,
    *,
    device: DeviceProfile | None = None,
    config: OffloaderConfig | None = None,
    threads: int = 1,
    min_seconds: float = 0.0,
    max_rounds: int | None = None,
    slice_s: float = 0.05,
    max_cell_s: float | None = None,
    progress: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    """Every workload under every condition; a server process and a netem proxy for all."""
    from edgeinfer.runtime import load

    device = device or DeviceProfile()
    config = config or OffloaderConfig(per_try_timeout_s=5.0)
    results: list[CellResult] = []
    models = {w.name: w.model_path for w in workloads}
    with edge(models, threads) as (_, px):
        for w in workloads:
            with load(w.model_path, providers=["cpu"], threads=threads) as local:
                local.predict(w.inputs)
                for cond in conditions:
                    res = run_cell(
                        w, local, px, cond, policies, rounds, device=device, config=config,
                        min_seconds=min_seconds, max_rounds=max_rounds or 10 * rounds,
                        slice_s=slice_s,
                        max_cell_s=max_cell_s,
                    )  # fmt: skip
                    results.append(res)
                    if progress is not None:
                        progress(res)
    return results


def plot_grid(results: Sequence[CellResult], path: Path, title: str = "") -> Path:
    """Mean latency per placement and policy, one panel per workload and slowdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in results))
    slowdowns = sorted({r.slowdown for r in results})
    fig, axes = plt.subplots(
        len(workloads), len(slowdowns), figsize=(4.2 * len(slowdowns), 3.4 * len(workloads)),
        squeeze=False, sharey="row",
    )  # fmt: skip
    styles = {"local": ("o", ":"), "remote": ("s", ":"), "latency": ("^", "-"),
              "energy": ("v", "--")}  # fmt: skip
    for i, w in enumerate(workloads):
        for j, slow in enumerate(slowdowns):
            ax = axes[i][j]
            cells = [r for r in results if r.workload == w and r.slowdown == slow]
            labels = [f"{r.rtt_ms:g}ms\n{r.rate_mbit or 0:g}Mb" for r in cells]
            names = list(dict.fromkeys(k for r in cells for k in r.mean_ms))
            for name in names:
                marker, line = styles.get(name, ("x", "-"))
                ax.plot(range(len(cells)), [r.mean_ms.get(name, float("nan")) for r in cells],
                        marker=marker, linestyle=line, label=name)  # fmt: skip
            ax.set_yscale("log")
            ax.set_xticks(range(len(cells)))
            ax.set_xticklabels(labels, fontsize=6)
            ax.set_title(f"{w}, device slowdown {slow:g}x (emulated)", fontsize=9)
            if j == 0:
                ax.set_ylabel("mean latency (ms)")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
