"""The edge server against its peers at their defaults and at their best, side by side.

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

Run: .venv/bin/python benchmarks/bench_server.py --peers-only [--peer-rounds N], or this file
(``--baseline-src DIR``: an earlier checkout's ``src`` served beside, for before/after in the
same rounds).
Writes benchmarks/results/server_peers.json.
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
MLSERVER_PYTHON = Path("/tmp/mlserver-venv/bin/python")
# the floor (floor_servers.py): bare uvicorn / bare grpc.aio doing the least work an answer
# needs (parse, one ONNX Runtime run, encode): what any Python server on those stacks pays
FLOORS = {"rest_json": "uvicorn-infer", "grpc": "grpc-infer"}
BASELINE = "edgeinfer_baseline"  # --baseline-src: an earlier edgeinfer, in the same rounds
FLOOR_LABELS = {
    "uvicorn-infer": "floor: bare uvicorn, json.loads, one run, json.dumps (REST only)",
    "grpc-infer": "floor: bare grpc.aio, parse, one run, serialize (gRPC only)",
}
TRITON_PYTHON = Path("/tmp/triton-venv/bin/python")


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


def peers_suite(
    work: Path,
    seconds: float,
    rounds: int,
    mlserver_python: Path = MLSERVER_PYTHON,
    triton: bool = True,
    edgeinfer_src: Path | None = None,
    with_floor: bool = True,
    baseline_src: Path | None = None,
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
        if mlserver_python.is_file():
            for setting in MLSERVER_SETTINGS:
                try:
                    servers.append(
                        start_mlserver_with(
                            mlserver_python,
                            work / setting.name,
                            {"tiny": tiny},
                            work / f"{setting.name}.log",
                            setting,
                        )
                    )
                    out["servers"][setting.name] = setting.label
                except RuntimeError as exc:
                    log = (work / f"{setting.name}.log").read_text()[-1500:]
                    out["errors"][setting.name] = f"{exc}; log: {log}"
        else:
            out["errors"]["mlserver"] = f"{mlserver_python} not found"
        if triton:
            import triton_peer

            for setting in triton_peer.SETTINGS:
                try:
                    server, label = triton_peer.start_triton(
                        work / "triton", {"tiny": tiny}, setting
                    )
                    servers.append(server)
                    out["servers"][server.name] = label
                except triton_peer.TritonUnavailable as exc:
                    out["errors"][setting] = str(exc)
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


def summarize(per_round: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per case: each server's median rps and CPU per answer, and edgeinfer over the best
    peer (and the best MLServer) in every round, with the target (>= 2x in every round)."""
    out: dict[str, Any] = {}
    for case in per_round[0]["cases"]:
        rows = [r["cases"][case] for r in per_round]
        entry: dict[str, Any] = {}
        for n in [*names, *FLOOR_LABELS]:
            rps = [row[n]["rps"] for row in rows if n in row]
            if not rps:
                continue
            cpu = [row[n]["server_cpu_ms_per_answer"] for row in rows if n in row]
            cpu = [c for c in cpu if c is not None]
            entry[n] = {
                "rps_median": round(statistics.median(rps), 1),
                "rps_range": [min(rps), max(rps)],
                "p50_ms_median": round(statistics.median(row[n]["p50_ms"] for row in rows), 3),
                "server_cpu_ms_per_answer_median": (
                    round(statistics.median(cpu), 4) if cpu else None
                ),
            }
        for key in (
            "edgeinfer_over_best_peer",
            "edgeinfer_over_best_mlserver",
            "edgeinfer_over_floor",
            "floor_over_best_mlserver",
            "edgeinfer_over_baseline",
        ):
            ratios = [row[key] for row in rows if row.get(key) is not None]
            if ratios:
                entry[f"{key}_per_round"] = ratios
                entry[f"{key}_min"] = min(ratios)
                entry[f"{key}_median"] = round(statistics.median(ratios), 3)
        if "edgeinfer_over_best_mlserver_min" in entry:
            entry["target_2x_best_mlserver_every_round"] = (
                entry["edgeinfer_over_best_mlserver_min"] >= 2.0
            )
        out[case] = entry
    return out


def run(
    seconds: float,
    rounds: int,
    mlserver_python: Path = MLSERVER_PYTHON,
    triton: bool = True,
    edgeinfer_src: Path | None = None,
    baseline_src: Path | None = None,
) -> Path:
    """The whole suite; writes results/server_peers.json and returns its path."""
    import gc

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    gc.collect()
    gc.freeze()  # the load generator's heap: no full collections read as server latency
    try:
        res = peers_suite(
            work, seconds, rounds, mlserver_python, triton, edgeinfer_src, baseline_src=baseline_src
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["conditions"] = {
        "model": "tiny MLP (4 -> 8 -> 3), one row per request",
        "seconds_per_window": seconds,
        "rounds": rounds,
        "threads_per_model": 1,
        "load_generator": "closed loop, asyncio + uvloop, raw HTTP/1.1 keep-alive / grpc.aio "
        "(4 channels), in the benchmark's process",
        "note": "one machine (2 cores shared with other work): load generator and every "
        "server share its cores; compare within a round",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "edgeinfer_src": None if edgeinfer_src is None else str(edgeinfer_src),
        "baseline_src": None if baseline_src is None else str(baseline_src),
    }
    return write("server_peers", res)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--mlserver-python", type=Path, default=MLSERVER_PYTHON)
    ap.add_argument("--edgeinfer-src", type=Path, help="another checkout's src folder")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="an earlier checkout's src folder, served beside and compared in every round",
    )
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(
        "wrote",
        run(
            args.seconds,
            args.rounds,
            args.mlserver_python,
            not args.no_triton,
            args.edgeinfer_src,
            args.baseline_src,
        ),
    )
