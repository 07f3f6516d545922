"""The edge server against its peers at their defaults and at their best, side by side.

The peers run from virtual environments of their own, made by ``benchmarks/peers/setup.sh DIR``
with every version pinned (MLServer 1.7.1 with uvloop 0.21, the nvidia-pytriton 0.7.0 wheel
for tritonserver 2.51, numpy 1.26 and ONNX Runtime for Triton's model; the project's
constraints.txt throughout) in ``DIR/mlserver-venv``, ``DIR/triton-venv`` and
``DIR/triton-model-venv``. DIR is /tmp unless ``--peers-dir`` or ``EDGEINFER_PEERS_DIR`` says
otherwise; a run whose environments are missing stops at once and says how to make them::

    benchmarks/peers/setup.sh /opt/peers
    .venv/bin/python benchmarks/bench_server.py --peers-only --peers-dir /opt/peers

Two workloads (``--peer-workload``): the tiny MLP, where a server's own cost per request is
all there is (below), and MiniLM INT8 (:func:`minilm_suite`), where the model's run is most
of it and batching decides throughput.

Every server runs at once on 127.0.0.1 and serves the same ONNX files with the same ONNX
Runtime settings (1 intra-op thread, spinning off):

- edgeinfer with its defaults (dynamic batching up to 8 rows, no added queue delay);
- Seldon MLServer 1.7.1 (its own virtual environment, the custom runtime in
  benchmarks/mlserver_runtime/) at its defaults (``parallel_workers: 1``: every request
  crosses to one inference worker process), with ``parallel_workers: 0`` (the model runs in
  the server's own process: the fastest setting for a small model here), and with
  ``parallel_workers: 0`` plus adaptive batching (``max_batch_size`` 8,
  ``max_batch_time`` 1 ms);
- Triton Inference Server 2.51 (from the ``nvidia-pytriton`` wheel, Python backend running
  the ONNX file with ONNX Runtime; see triton_peer.py) at its defaults and with dynamic
  batching, where it runs here.

The measurement is paired and interleaved: in each round, every (protocol, concurrency) is
measured on every server in turn, one window each (the order rotates round by round), so a
slow spell of this shared machine weighs on the servers compared in that round alike. The
figure is edgeinfer's throughput over the best peer's *in the same round*, for every round
(the target is met only if every round meets it), besides each server's median. The server's
CPU time per answer (psutil, the process and its children) is recorded with every window:
it depends less on what else runs on the machine than requests per second do.

Run: .venv/bin/python benchmarks/bench_server.py --peers-only [--peer-rounds N]
[--peer-workload tiny|minilm|all] [--peers-dir DIR], or this file (``--baseline-src DIR``: an
earlier checkout's ``src`` served beside, for before/after in the same rounds).
Writes benchmarks/results/server_peers.json (tiny) and server_peers_minilm.json (MiniLM).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write  # noqa: E402

KINDS = ("rest_json", "grpc")
PEER_CONCURRENCY = (1, 32)
WARMUP_S = 0.3  # each window's unrecorded start (measure_recorded)
# the floor (floor_servers.py): bare uvicorn / bare grpc.aio doing the least work an answer
# needs (parse, one ONNX Runtime run, encode): what any Python server on those stacks pays
FLOORS = {"rest_json": "uvicorn-infer", "grpc": "grpc-infer"}
BASELINE = "edgeinfer_baseline"  # --baseline-src: an earlier edgeinfer, in the same rounds
FLOOR_LABELS = {
    "uvicorn-infer": "floor: bare uvicorn, json.loads, one run, json.dumps (REST only)",
    "grpc-infer": "floor: bare grpc.aio, parse, one run, serialize (gRPC only)",
}
PEERS_DIR = Path(os.environ.get("EDGEINFER_PEERS_DIR", "/tmp"))  # setup.sh's DIR
SETUP = "benchmarks/peers/setup.sh"


def mlserver_python_in(peers_dir: Path) -> Path:
    """MLServer's Python in the peers' directory."""
    return peers_dir / "mlserver-venv" / "bin" / "python"


MLSERVER_PYTHON = mlserver_python_in(PEERS_DIR)


def missing_peers(peers_dir: Path, mlserver: Path | None = None, triton: bool = True) -> str:
    """One line saying which peer environments are missing and how to make them; "" if none.

    ``mlserver``: MLServer's Python if not the one in ``peers_dir``."""
    import triton_peer

    mlserver = mlserver or mlserver_python_in(peers_dir)
    gone = [] if mlserver.is_file() else [str(mlserver.parent.parent)]
    if triton:
        wheel, model = triton_peer.venvs(peers_dir)
        gone += [str(v) for v in (wheel, model) if not (v / "bin" / "python").is_file()]
    if not gone:
        return ""
    skip = " (or --no-triton to leave Triton out)" if triton else ""
    return (
        f"the peers' environments are missing: {', '.join(gone)}; create them with "
        f"{SETUP} {peers_dir}{skip}"
    )


@dataclass
class MLServerSetting:
    """One MLServer configuration: server settings and per-model settings over its defaults."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    label: str = ""


MLSERVER_SETTINGS = (
    MLServerSetting("mlserver_defaults", label="defaults (parallel_workers 1, no batching)"),
    MLServerSetting(
        "mlserver_pw0", {"parallel_workers": 0}, label="parallel_workers 0 (model in-process)"
    ),
    MLServerSetting(
        "mlserver_pw0_batch8",
        {"parallel_workers": 0},
        {"max_batch_size": 8, "max_batch_time": 0.001},
        label="parallel_workers 0, adaptive batching 8 rows / 1 ms",
    ),
)


def start_mlserver_with(
    python: Path, root: Path, models: dict[str, Path], log: Path, setting: MLServerSetting
) -> Any:
    """MLServer serving ``models`` with ``setting`` over its defaults."""
    from bench_server import start_mlserver

    return start_mlserver(
        python, root, models, log, setting.settings, setting.model, label=setting.name
    )


def _cpu_s(proc: Any) -> float:
    """User + system CPU seconds of a process and its children (psutil)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # a child that just ended
            pass
    return total


def measure_window(
    server: Any, p: dict[str, Any], kind: str, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One window on ``server``: the load generator's summary plus server CPU per answer."""
    import psutil

    from bench_server import measure

    proc = psutil.Process(server.proc.pid)
    before = _cpu_s(proc)
    r = asyncio.run(measure(server, p, kind, concurrency, seconds))
    cpu = _cpu_s(proc) - before
    if r.get("requests"):
        # includes the window's short unrecorded warm-up: alike for every server
        r["server_cpu_ms_per_answer"] = round(cpu * 1e3 / max(1, r["requests"]), 4)
    return r


def start_peers(
    work: Path,
    models: dict[str, Path],
    out: dict[str, Any],
    mlserver_python: Path,
    mlserver_settings: tuple[MLServerSetting, ...],
    triton: bool,
    batch: int,
    peers_dir: Path,
) -> list[Any]:
    """Every MLServer setting and Triton's (``batch``: its dynamic batches' rows) serving
    ``models``; what started is named in ``out["servers"]``, what failed in ``out["errors"]``."""
    servers: list[Any] = []
    if mlserver_python.is_file():
        for setting in mlserver_settings:
            try:
                servers.append(
                    start_mlserver_with(
                        mlserver_python, work / setting.name, models,
                        work / f"{setting.name}.log", setting,
                    )
                )  # fmt: skip
                out["servers"][setting.name] = setting.label
            except RuntimeError as exc:
                log = (work / f"{setting.name}.log").read_text()[-1500:]
                out["errors"][setting.name] = f"{exc}; log: {log}"
    else:
        out["errors"]["mlserver"] = f"{mlserver_python} not found: create it with {SETUP}"
    if triton:
        import triton_peer

        for kind in triton_peer.SETTINGS:
            try:
                server, label = triton_peer.start_triton(
                    work / "triton", models, kind, batch, peers_dir
                )
                servers.append(server)
                out["servers"][server.name] = label
            except triton_peer.TritonUnavailable as exc:
                out["errors"][kind] = str(exc)
    return servers


def measure_recorded(
    server: Any, p: dict[str, Any], kind: str, concurrency: int, seconds: float
) -> dict[str, Any]:
    """As :func:`measure_window`, with the server's CPU time read at the start and the end of
    the recorded window only (a thread beside the load generator), so that neither the
    warm-up's answers nor the requests still in flight at its end, none of them counted,
    are charged to the counted ones: with MiniLM at 32 clients those are as many answers
    as the window counts."""
    import threading

    import psutil

    from bench_server import measure

    proc = psutil.Process(server.proc.pid)
    marks: list[float] = []

    def mark() -> None:
        time.sleep(WARMUP_S)  # the load generator's unrecorded warm-up (its default)
        marks.append(_cpu_s(proc))
        time.sleep(seconds)
        marks.append(_cpu_s(proc))

    t = threading.Thread(target=mark, daemon=True)
    t.start()
    r = asyncio.run(measure(server, p, kind, concurrency, seconds, warmup_s=WARMUP_S))
    t.join()
    if r.get("requests") and len(marks) == 2:
        r["server_cpu_ms_per_answer"] = round((marks[1] - marks[0]) * 1e3 / r["requests"], 4)
    return r


def peers_suite(
    work: Path,
    seconds: float,
    rounds: int,
    mlserver_python: Path = MLSERVER_PYTHON,
    triton: bool = True,
    edgeinfer_src: Path | None = None,
    with_floor: bool = True,
    baseline_src: Path | None = None,
    peers_dir: Path = PEERS_DIR,
) -> dict[str, Any]:
    """Tiny MLP, REST JSON and gRPC, concurrency 1 and 32: every server per round, and the
    floor of each protocol (:data:`FLOORS`)."""
    import edgeinfer
    from bench_server import check_answers, payloads, start_edgeinfer, tiny_model

    repo = work / "repo"
    tiny = tiny_model(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.json").write_text(json.dumps({"queue_timeout_s": 0.1}))
    feeds = {"x": np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)}
    m = edgeinfer.load(tiny, providers=["cpu"], threads=1)
    want = m.predict(feeds)
    m.close()
    p = payloads("tiny", feeds)
    out: dict[str, Any] = {"servers": {}, "errors": {}}
    servers: list[Any] = []
    floors: dict[str, Any] = {}  # kind -> the bare server for that protocol
    try:
        servers.append(start_edgeinfer(repo, ["tiny"], work / "edgeinfer.log", src=edgeinfer_src))
        out["servers"]["edgeinfer"] = "defaults (max_batch_size 8, no queue delay)"
        if baseline_src is not None:  # another checkout, for before/after in the same rounds
            servers.append(
                start_edgeinfer(
                    repo, ["tiny"], work / "baseline.log", src=baseline_src, name=BASELINE
                )
            )
            out["servers"][BASELINE] = f"edgeinfer from {baseline_src} (not a peer)"
        servers += start_peers(
            work,
            {"tiny": tiny},
            out,
            mlserver_python,
            MLSERVER_SETTINGS,
            triton,
            batch=8,
            peers_dir=peers_dir,
        )
        if with_floor:
            from bench_server import _start_floor

            for kind, mode in FLOORS.items():
                floors[kind] = _start_floor(mode, repo, work / f"{mode}.log")
                floors[kind].name = mode
                check_answers(floors[kind], "tiny", p, [kind], want)
            out["servers"].update(FLOOR_LABELS)
        for server in servers:
            check_answers(server, "tiny", p, list(KINDS), want)
        cases = [(k, c) for k in KINDS for c in PEER_CONCURRENCY]
        per_round: list[dict[str, Any]] = []
        for r in range(rounds):
            load = round(os.getloadavg()[0], 2)
            row: dict[str, Any] = {"round": r, "load_average_1m": load, "cases": {}}
            for kind, c in cases:
                here = servers + ([floors[kind]] if kind in floors else [])
                order = here[r % len(here) :] + here[: r % len(here)]
                case: dict[str, Any] = {}
                for server in order:
                    case[server.name] = measure_window(server, p, kind, c, seconds)
                peers = {
                    n: v["rps"]
                    for n, v in case.items()
                    if n not in ("edgeinfer", BASELINE) and n not in FLOOR_LABELS
                }
                best = max(peers, key=peers.__getitem__) if peers else None
                summary = {
                    n: {
                        k: v.get(k) for k in ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_answer")
                    }
                    for n, v in case.items()
                }
                if best is not None:
                    summary["best_peer"] = best
                    summary["edgeinfer_over_best_peer"] = round(
                        case["edgeinfer"]["rps"] / max(peers[best], 1e-9), 3
                    )
                    if BASELINE in case:
                        summary["edgeinfer_over_baseline"] = round(
                            case["edgeinfer"]["rps"] / max(case[BASELINE]["rps"], 1e-9), 3
                        )
                    floor = FLOORS.get(kind)
                    if floor in case:
                        summary["edgeinfer_over_floor"] = round(
                            case["edgeinfer"]["rps"] / max(case[floor]["rps"], 1e-9), 3
                        )
                        summary["floor_over_best_mlserver"] = None
                    mls = {n: v for n, v in peers.items() if n.startswith("mlserver")}
                    if mls:
                        bm = max(mls, key=mls.__getitem__)
                        summary["best_mlserver"] = bm
                        summary["edgeinfer_over_best_mlserver"] = round(
                            case["edgeinfer"]["rps"] / max(mls[bm], 1e-9), 3
                        )
                        if floor in case:
                            summary["floor_over_best_mlserver"] = round(
                                case[floor]["rps"] / max(mls[bm], 1e-9), 3
                            )
                row["cases"][f"{kind}_c{c}"] = summary
                print(f"round {r} {kind} c{c}", json.dumps(summary), flush=True)
            per_round.append(row)
        out["rounds"] = per_round
        out["summary"] = summarize(per_round, [s.name for s in servers])
    finally:
        for server in [*servers, *floors.values()]:
            server.stop()
    return out


IN_PROCESS = "in_process"  # Model.predict in the benchmark's process: the limit
# MiniLM INT8's best in-process batch on one thread in bench_server.py's quiet runs
# (server.json: 61.6 rows/s at 1 row, 65.6 at 4, 65.0 at 8, 62.1 at 16, 54.5 at 32): a scan
# on a busy machine picks any size of that flat curve, and batches of 32 make a 3 s window
# count completions in lumps of 32.
MINILM_BATCH = 4
MINILM_BATCH_TIME_S = 0.002  # MLServer's adaptive batching: the longest wait for a batch


def minilm_settings(batch: int) -> tuple[MLServerSetting, ...]:
    """MLServer for MiniLM: ``parallel_workers`` 1 (its default) and 0, each with adaptive
    batching off and on (``batch`` rows, :data:`MINILM_BATCH_TIME_S` at most)."""
    adaptive = {"max_batch_size": batch, "max_batch_time": MINILM_BATCH_TIME_S}
    wait = f"{MINILM_BATCH_TIME_S * 1e3:g} ms"
    return (
        MLServerSetting("mlserver_defaults", label="defaults (parallel_workers 1, no batching)"),
        MLServerSetting(
            "mlserver_pw0", {"parallel_workers": 0}, label="parallel_workers 0, no batching"
        ),
        MLServerSetting(
            f"mlserver_batch{batch}",
            model=adaptive,
            label=f"parallel_workers 1, adaptive batching {batch} rows / {wait}",
        ),
        MLServerSetting(
            f"mlserver_pw0_batch{batch}",
            {"parallel_workers": 0},
            adaptive,
            label=f"parallel_workers 0, adaptive batching {batch} rows / {wait}",
        ),
    )


def in_process_window(
    model: Any, feeds: dict[str, np.ndarray], batch: int, seconds: float
) -> dict[str, Any]:
    """``model.predict`` at ``batch`` rows back to back for ``seconds``: rows/s, and the CPU
    time a row took (the calling thread's: ONNX Runtime on one thread runs on it)."""
    batched = {k: np.ascontiguousarray(np.repeat(v, batch, axis=0)) for k, v in feeds.items()}
    model.predict(batched)
    rows, cpu, start = 0, time.thread_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(batched)
        rows += batch
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return {
        "rps": round(rows / elapsed, 2),
        "batch": batch,
        "cpu_ms_per_row": round(cpu * 1e3 / rows, 3),
    }


def compare(case: dict[str, Any]) -> dict[str, Any]:
    """One case of one round: each server's figures, the best peer and the best MLServer, and
    edgeinfer (and the best of each) over the in-process limit where it was measured.

    Besides throughput, CPU time: the in-process CPU time a row takes over the CPU time the
    server spends on an answer (``in_process_cpu_over_edgeinfer_cpu``: 1.0 would be a server
    that costs nothing beyond the model), and the least CPU an MLServer setting spent on an
    answer over edgeinfer's. Requests/s on a shared machine move with what else runs (and
    the scheduler gives a process with several busy threads a larger share than one
    ``Model.predict`` thread); CPU time per answer moves much less.
    """
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_answer", "batch", "cpu_ms_per_row")
    summary: dict[str, Any] = {
        n: {k: v[k] for k in keys if v.get(k) is not None} for n, v in case.items()
    }
    edge = case["edgeinfer"]["rps"]
    peers = {
        n: v["rps"]
        for n, v in case.items()
        if n not in ("edgeinfer", BASELINE, IN_PROCESS) and n not in FLOOR_LABELS
    }
    limit = case.get(IN_PROCESS, {}).get("rps")
    if limit:
        summary["edgeinfer_over_in_process"] = round(edge / limit, 3)
    edge_cpu = case["edgeinfer"].get("server_cpu_ms_per_answer")
    row_cpu = case.get(IN_PROCESS, {}).get("cpu_ms_per_row")
    if edge_cpu and row_cpu:
        summary["in_process_cpu_over_edgeinfer_cpu"] = round(row_cpu / edge_cpu, 3)
    mls_cpu = [
        v["server_cpu_ms_per_answer"]
        for n, v in case.items()
        if n.startswith("mlserver") and v.get("server_cpu_ms_per_answer")
    ]
    if edge_cpu and mls_cpu:
        summary["mlserver_least_cpu_over_edgeinfer_cpu"] = round(min(mls_cpu) / edge_cpu, 3)
    for prefix, group in (
        ("peer", peers),
        ("mlserver", {n: v for n, v in peers.items() if n.startswith("mlserver")}),
    ):
        if not group:
            continue
        best = max(group, key=group.__getitem__)
        summary[f"best_{prefix}"] = best
        summary[f"edgeinfer_over_best_{prefix}"] = round(edge / max(group[best], 1e-9), 3)
        if limit:
            summary[f"best_{prefix}_over_in_process"] = round(group[best] / limit, 3)
    return summary


def minilm_suite(
    work: Path,
    seconds: float,
    rounds: int,
    mlserver_python: Path = MLSERVER_PYTHON,
    triton: bool = True,
    peers_dir: Path = PEERS_DIR,
    edgeinfer_src: Path | None = None,
    batch: int = MINILM_BATCH,
) -> dict[str, Any]:
    """MiniLM INT8 (one sentence, 128 tokens a request), REST JSON and gRPC, 1 and 32
    clients: edgeinfer, MLServer's four settings (:func:`minilm_settings`), Triton with and
    without dynamic batching, and the in-process limit, every one per round.

    The model is bench_server.py's own MiniLM INT8 (``second_model``: the zoo's export,
    dynamically quantized once and cached), the same file for every server. Every batching
    server batches up to the same number of rows, ``batch``: the batch size at which
    ``Model.predict`` runs fastest here (:data:`MINILM_BATCH`; bench_server.py serves MiniLM
    so, and a model analyzer would choose it). The in-process limit takes its turn in each
    case's rotation like a server: ``Model.predict`` back to back in the benchmark's process,
    at batch 1 for one client (the most one client can get) and at ``batch`` for 32, with
    the CPU time a row takes. Each server's CPU time per answer is read over the recorded
    window only (:func:`measure_recorded`).
    """
    import edgeinfer
    from bench_server import (
        BIG_QUEUE_TIMEOUT_S,
        check_answers,
        payloads,
        second_model,
        start_edgeinfer,
    )

    repo = work / "repo"
    (repo / "big" / "1").mkdir(parents=True)
    name, path, feeds = second_model(repo / "big" / "1" / "model.onnx")
    (repo / "big" / "config.json").write_text(
        json.dumps(
            {"queue_timeout_s": BIG_QUEUE_TIMEOUT_S, "max_queue_size": 64, "max_batch_size": batch}
        )
    )
    model = edgeinfer.load(path, providers=["cpu"], threads=1)
    want = model.predict(feeds)
    p = payloads("big", feeds)
    out: dict[str, Any] = {
        "model": name,
        "max_batch_size": batch,
        "servers": {},
        "errors": {},
    }
    servers: list[Any] = []
    try:
        servers.append(start_edgeinfer(repo, ["big"], work / "edgeinfer.log", src=edgeinfer_src))
        out["servers"]["edgeinfer"] = (
            f"max_batch_size {batch} (the best in-process batch), no queue delay, queue 64, "
            f"queue timeout {BIG_QUEUE_TIMEOUT_S:g} s"
        )
        servers += start_peers(
            work, {"big": path}, out, mlserver_python, minilm_settings(batch), triton, batch,
            peers_dir,
        )  # fmt: skip
        out["servers"][IN_PROCESS] = (
            f"Model.predict back to back in the benchmark's process: batch 1 for 1 client, "
            f"batch {batch} for 32"
        )
        for server in servers:
            check_answers(server, "big", p, list(KINDS), want)
        cases = [(k, c) for k in KINDS for c in PEER_CONCURRENCY]
        per_round: list[dict[str, Any]] = []
        for r in range(rounds):
            load = round(os.getloadavg()[0], 2)
            row: dict[str, Any] = {"round": r, "load_average_1m": load, "cases": {}}
            for kind, c in cases:
                here = [*servers, IN_PROCESS]
                case: dict[str, Any] = {}
                for server in here[r % len(here) :] + here[: r % len(here)]:
                    if server == IN_PROCESS:
                        rows = 1 if c == 1 else batch
                        case[IN_PROCESS] = in_process_window(model, feeds, rows, seconds)
                    else:
                        case[server.name] = measure_recorded(server, p, kind, c, seconds)
                row["cases"][f"{kind}_c{c}"] = summary = compare(case)
                print(f"round {r} {kind} c{c}", json.dumps(summary), flush=True)
            row["load_average_1m_end"] = round(os.getloadavg()[0], 2)
            per_round.append(row)
        out["rounds"] = per_round
        out["summary"] = summarize(
            per_round, [s.name for s in servers] + [IN_PROCESS], MINILM_TARGETS
        )
    finally:
        model.close()
        for server in servers:
            server.stop()
    return out


# the targets: ratio -> (its least value, the concurrencies it is set for), to be
# met in every round and by the median; the in-process one is set for a full server (as in
# bench_server.py), where batches can form: one client can only run batches of one
TINY_TARGETS = {"edgeinfer_over_best_mlserver": (2.0, (1, 32))}
MINILM_TARGETS = {
    "edgeinfer_over_best_mlserver": (1.0, (1, 32)),
    "edgeinfer_over_in_process": (0.9, (32,)),
}
RATIOS = (
    "edgeinfer_over_best_peer",
    "edgeinfer_over_best_mlserver",
    "edgeinfer_over_in_process",
    "best_peer_over_in_process",
    "best_mlserver_over_in_process",
    "in_process_cpu_over_edgeinfer_cpu",
    "mlserver_least_cpu_over_edgeinfer_cpu",
    "edgeinfer_over_floor",
    "floor_over_best_mlserver",
    "edgeinfer_over_baseline",
)


def summarize(
    per_round: list[dict[str, Any]],
    names: list[str],
    targets: dict[str, tuple[float, tuple[int, ...]]] = TINY_TARGETS,
) -> dict[str, Any]:
    """Per case: each server's median rps and CPU per answer, and edgeinfer over the best
    peer (and the best MLServer, and the in-process limit) in every round, with ``targets``
    (met in every round, and by the median)."""
    out: dict[str, Any] = {}
    for case in per_round[0]["cases"]:
        rows = [r["cases"][case] for r in per_round]
        entry: dict[str, Any] = {}
        for n in [*names, *FLOOR_LABELS]:
            mine = [row[n] for row in rows if n in row]
            if not mine:
                continue
            rps = [m["rps"] for m in mine]
            p50 = [m["p50_ms"] for m in mine if m.get("p50_ms") is not None]
            cpu = [m["server_cpu_ms_per_answer"] for m in mine if "server_cpu_ms_per_answer" in m]
            cpu += [m["cpu_ms_per_row"] for m in mine if "cpu_ms_per_row" in m]
            entry[n] = {
                "rps_median": round(statistics.median(rps), 1),
                "rps_range": [min(rps), max(rps)],
                "p50_ms_median": round(statistics.median(p50), 3) if p50 else None,
                "server_cpu_ms_per_answer_median": (
                    round(statistics.median(cpu), 4) if cpu else None
                ),
            }
        for key in RATIOS:
            ratios = [row[key] for row in rows if row.get(key) is not None]
            if ratios:
                entry[f"{key}_per_round"] = ratios
                entry[f"{key}_min"] = min(ratios)
                entry[f"{key}_median"] = round(statistics.median(ratios), 3)
        # one window against the best of four others favours the four when windows move by
        # 2-3x: beside the per-round ratios, the medians over the rounds, best by median
        medians = {n: v["rps_median"] for n, v in entry.items() if isinstance(v, dict)}
        if medians.get("edgeinfer"):
            not_peers = ("edgeinfer", BASELINE, IN_PROCESS, *FLOOR_LABELS)
            groups = {
                "peer": [n for n in medians if n not in not_peers],
                "mlserver": [n for n in medians if n.startswith("mlserver")],
            }
            for label, group in groups.items():
                if group:
                    best = max(group, key=medians.__getitem__)
                    entry[f"best_{label}_by_median"] = best
                    entry[f"edgeinfer_median_over_best_{label}_median"] = round(
                        medians["edgeinfer"] / max(medians[best], 1e-9), 3
                    )
            if medians.get(IN_PROCESS):
                entry["edgeinfer_median_over_in_process_median"] = round(
                    medians["edgeinfer"] / medians[IN_PROCESS], 3
                )
        clients = int(case.rsplit("_c", 1)[1])
        for key, (least, concurrencies) in targets.items():
            if f"{key}_min" in entry and clients in concurrencies:
                entry[f"target_{key}>={least:g}_every_round"] = entry[f"{key}_min"] >= least
                entry[f"target_{key}>={least:g}_median"] = entry[f"{key}_median"] >= least
        out[case] = entry
    return out


WORKLOADS = ("tiny", "minilm")


def run(
    seconds: float,
    rounds: int,
    mlserver_python: Path = MLSERVER_PYTHON,
    triton: bool = True,
    edgeinfer_src: Path | None = None,
    baseline_src: Path | None = None,
    workload: str = "tiny",
    peers_dir: Path = PEERS_DIR,
) -> Path:
    """One workload's suite (``"tiny"``: :func:`peers_suite`, ``"minilm"``:
    :func:`minilm_suite`); writes results/server_peers.json or server_peers_minilm.json and
    returns its path."""
    import gc

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    gc.collect()
    gc.freeze()  # the load generator's heap: no full collections read as server latency
    try:
        if workload == "minilm":
            res = minilm_suite(
                work, seconds, rounds, mlserver_python, triton, peers_dir, edgeinfer_src
            )
        else:
            res = peers_suite(
                work, seconds, rounds, mlserver_python, triton, edgeinfer_src,
                baseline_src=baseline_src, peers_dir=peers_dir,
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = (
        "MiniLM INT8 (all-MiniLM-L6-v2, ONNX Runtime dynamic quantization), one sentence of "
        "128 tokens (int64 ids, mask, types) per request"
        if workload == "minilm"
        else "tiny MLP (4 -> 8 -> 3), one row per request"
    )
    res["conditions"] = {
        "model": model,
        "seconds_per_window": seconds,
        "rounds": rounds,
        "threads_per_model": 1,
        "load_generator": "closed loop, asyncio + uvloop, raw HTTP/1.1 keep-alive / grpc.aio "
        "(4 channels), in the benchmark's process",
        "note": "one machine (2 cores shared with other work): load generator and every "
        "server share its cores; compare within a round",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
        "cpu_time": "server_cpu_ms_per_answer: the server process and its children (psutil); "
        "for MiniLM over the recorded window only; in_process: CPU ms per row of "
        "Model.predict's thread",
        "peers_dir": str(peers_dir),
        "edgeinfer_src": None if edgeinfer_src is None else str(edgeinfer_src),
        "baseline_src": None if baseline_src is None else str(baseline_src),
    }
    return write("server_peers_minilm" if workload == "minilm" else "server_peers", res)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="tiny")
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=PEERS_DIR,
        help=f"where {SETUP} made the peers' environments (default {PEERS_DIR})",
    )
    ap.add_argument("--mlserver-python", type=Path, help="default: in --peers-dir")
    ap.add_argument("--edgeinfer-src", type=Path, help="another checkout's src folder")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="an earlier checkout's src folder, served beside and compared in every round",
    )
    args = ap.parse_args()
    missing = missing_peers(args.peers_dir, args.mlserver_python, not args.no_triton)
    if missing:
        print(f"server_peers.py: {missing}", file=sys.stderr)
        sys.exit(2)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for workload in WORKLOADS if args.workload == "all" else (args.workload,):
        print(
            "wrote",
            run(
                args.seconds,
                args.rounds,
                args.mlserver_python or mlserver_python_in(args.peers_dir),
                not args.no_triton,
                args.edgeinfer_src,
                args.baseline_src,
                workload,
                args.peers_dir,
            ),
        )
