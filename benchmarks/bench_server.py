"""The edge server against Seldon MLServer, with one load generator, on this machine.

Both servers run as separate processes on 127.0.0.1 and serve the same ONNX files with the
same ONNX Runtime settings (1 intra-op thread, spinning off); MLServer runs in its own
virtual environment (``mlserver-venv`` in the peers' directory, /tmp by default: made with
the other peers' environments by ``benchmarks/peers/setup.sh DIR``, then ``--peers-dir DIR``)
with a minimal custom runtime (benchmarks/mlserver_runtime/onnx_runtime.py) and its default
settings otherwise (one parallel inference worker process, no adaptive batching). edgeinfer
runs with its defaults (dynamic batching up to 8 rows, no added queue delay, one instance)
plus a bounded queue and a queue timeout; MiniLM's batches are capped at the batch size
that gave the best in-process throughput (measured first, in the same run).

Measured (issue targets in brackets):
- tiny model (MLP) and MiniLM INT8 (or the digits CNN if MiniLM is missing): requests/s and
  p50/p90/p99 at concurrency 1, 8, 32, REST (JSON tensors, both servers; binary tensors,
  edgeinfer) and gRPC (raw tensor contents);
- tiny, REST binary, concurrency 1: p50 added over in-process ``Model.predict`` [<= 1 ms];
- tiny, concurrency 32: edgeinfer / MLServer throughput, REST and gRPC [>= 2x];
- MiniLM INT8, concurrency 32: server throughput / best in-process throughput [>= 90%];
  besides the sweep, measured paired (``paired_big``): rounds that each run the in-process
  best batch and then the server, so a slow spell of this shared machine hits both sides of
  a ratio; the median ratio over the rounds is the figure;
- overload at 2x the saturating concurrency, 10,000 requests: goodput / peak [>= 90%],
  rejection latency [<= 5 ms], p99 of accepted [<= queue timeout], RSS over the run [flat];
  REST and gRPC, a tight queue and one sized by the rule of thumb, and three kinds of client
  after a refusal: a well-behaved one that waits the server's Retry-After plus jitter, one
  that retries at once (the harshest), one that pauses a fixed 10 ms (see ``overload_suite``);
- the peers at their defaults and at their best (``--peers-only``, benchmarks/server_peers.py):
  MLServer with ``parallel_workers`` 1 and 0 and adaptive batching, Triton 2.51 where it
  runs (benchmarks/triton_peer.py), in paired rounds; edgeinfer over the best of them; for
  the tiny model and for MiniLM INT8 (``--peer-workload``; MiniLM also over the in-process
  limit);
- the refusal floor (``--floor-only``): servers that refuse every request under the same
  load, bare uvicorn and bare grpc.aio beside edgeinfer's whole refusal path: what any
  Python server on those stacks pays per refusal (see ``floor_suite``);
- the gRPC answer floors (``--grpc-floors-only``): edgeinfer's gRPC beside the best MLServer
  settings and bare servers on both of grpc's Python servers (grpc.aio parsing with message
  objects or walking the bytes; the synchronous server on 1, 2 and 4 threads), paired
  rounds at 1 and 32 clients, with server CPU per answer (see ``grpc_floor_suite``).

The load generator (benchmarks/server_loadgen.py) is closed-loop asyncio on uvloop: raw
HTTP/1.1 keep-alive connections, or grpc.aio. It shares the machine's cores with the servers.
Run: .venv/bin/python benchmarks/bench_server.py [--quick] [--overload-only | --big-only |
--overload-big-only | --floor-only | --peers-only | --grpc-floors-only]
[--mlserver-python PATH]. Writes benchmarks/results/server.json (``--overload-only`` and
``--big-only`` replace only their part of it; ``--grpc-floors-only`` writes
server_grpc_floors.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write  # noqa: E402
from server_loadgen import (  # noqa: E402
    INSTANT,
    Backoff,
    Result,
    http_request,
    run_grpc,
    run_http,
)

THREADS = 1
QUEUE_TIMEOUT_S = 0.1  # tiny model (per-model config.json)
BIG_QUEUE_TIMEOUT_S = 30.0  # the slow model: throughput runs must not time out
CONCURRENCY = (1, 8, 32)
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- models
def tiny_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def second_model(dest: Path) -> tuple[str, Path, dict[str, np.ndarray]]:
    """MiniLM INT8 (dynamic quantization of the zoo export), else the digits CNN."""
    from edgeinfer.bundle import cache_dir

    try:
        from edgeinfer.zoo import minilm

        fp32 = minilm.export()
        int8 = cache_dir() / "bench" / "minilm-int8.onnx"
        if not int8.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8.parent.mkdir(parents=True, exist_ok=True)
            tmp = int8.with_suffix(".tmp.onnx")
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
            os.replace(tmp, int8)
        feeds = minilm.tokenize(minilm.sentences(1), seq_len=128)
        shutil.copyfile(int8, dest)
        return "minilm-int8", dest, {k: np.ascontiguousarray(v) for k, v in feeds.items()}
    except Exception as exc:  # no MiniLM here: the digits CNN stands in
        print(f"MiniLM INT8 unavailable ({exc}); using the digits CNN", file=sys.stderr)
        from edgeinfer.zoo import digits

        bundle = digits.build(dest.parent / "digits-bundle")
        shutil.copyfile(bundle.model_path, dest)
        _, _, x_test, _ = digits.load_data()
        return "digits-cnn", dest, {"pixels": np.ascontiguousarray(x_test[:1])}


def in_process(path: Path, feeds: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    """Model.predict latency at batch 1 and the best throughput over batch sizes."""
    import edgeinfer

    model = edgeinfer.load(path, providers=["cpu"], threads=THREADS)
    out: dict[str, Any] = {"threads": THREADS}
    best = 0.0
    for batch in (1, 4, 8, 16, 32):
        batched = {k: np.ascontiguousarray(np.repeat(v, batch, axis=0)) for k, v in feeds.items()}
        for _ in range(3):
            model.predict(batched)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 20:
            t = time.perf_counter()
            model.predict(batched)
            times.append(time.perf_counter() - t)
        rate = batch / float(np.median(times))
        if batch == 1:
            out["p50_ms_batch1"] = round(float(np.median(times)) * 1e3, 4)
        out[f"rows_per_s_batch{batch}"] = round(rate, 1)
        if rate > best:
            best, out["best_batch"] = rate, batch
    out["best_rows_per_s"] = round(best, 1)
    model.close()
    return out


def in_process_rate(model: Any, feeds: dict[str, np.ndarray], batch: int, seconds: float) -> float:
    """Rows/s of ``model.predict`` at ``batch`` rows, back to back for ``seconds``."""
    batched = {k: np.ascontiguousarray(np.repeat(v, batch, axis=0)) for k, v in feeds.items()}
    model.predict(batched)
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(batched)
        rows += batch
    return rows / (time.perf_counter() - start)


def paired_big(
    server: Server,
    path: Path,
    feeds: dict[str, np.ndarray],
    batch: int,
    kinds: list[str],
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    """Server throughput at concurrency 32 over in-process throughput at ``batch``, in
    ``rounds`` rounds of in-process then each server kind; the ratio per round and the
    median. The server process idles while the in-process model runs, and the reverse."""
    import edgeinfer

    p = payloads("big", feeds)
    model = edgeinfer.load(path, providers=["cpu"], threads=THREADS)
    per_round: list[dict[str, float]] = []
    try:
        for _ in range(rounds):
            base = in_process_rate(model, feeds, batch, seconds)
            row = {"in_process_rows_per_s": round(base, 2)}
            for kind in kinds:
                rps = asyncio.run(measure(server, p, kind, 32, seconds))["rps"]
                row[f"{kind}_rps"] = round(rps, 2)
                row[f"{kind}_over_in_process"] = round(rps / base, 3)
            per_round.append(row)
            print("paired", json.dumps(row), flush=True)
    finally:
        model.close()
    out: dict[str, Any] = {"batch": batch, "seconds": seconds, "rounds": per_round}
    for kind in kinds:
        ratios = [r[f"{kind}_over_in_process"] for r in per_round]
        out[f"{kind}_over_in_process_median"] = round(statistics.median(ratios), 3)
        out[f"{kind}_over_in_process_range"] = [min(ratios), max(ratios)]
    return out


# ---------------------------------------------------------------- servers
def wait_ready(port: int, models: list[str], proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    urls = [f"http://127.0.0.1:{port}/v2/models/{m}/ready" for m in models]
    while True:
        try:
            if all(urllib.request.urlopen(u, timeout=2).status == 200 for u in urls):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not become ready")
        time.sleep(0.2)


class Server:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], http: int, grpc: int) -> None:
        self.name, self.proc, self.http, self.grpc = name, proc, http, grpc

    def rss_mb(self) -> float:
        import psutil

        p = psutil.Process(self.proc.pid)
        procs = [p, *p.children(recursive=True)]
        return float(sum(x.memory_info().rss for x in procs if x.is_running())) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_edgeinfer(
    repo: Path, models: list[str], log: Path, src: Path | None = None, name: str = "edgeinfer"
) -> Server:
    """``edgeinfer serve`` in a process of its own; ``src``: another checkout's ``src`` dir."""
    http, grpc = free_port(), free_port()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    cmd = [
        sys.executable,
        "-m",
        "edgeinfer",
        "serve",
        str(repo),
        "--port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--threads",
        str(THREADS),
        "--poll",
        "0",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_ready(http, models, proc, 120)
    return Server(name, proc, http, grpc)


def start_mlserver(
    python: Path,
    root: Path,
    models: dict[str, Path],
    log: Path,
    settings: dict[str, Any] | None = None,
    model_settings: dict[str, Any] | None = None,
    label: str = "mlserver",
) -> Server:
    """MLServer serving ``models``: its defaults, or ``settings`` (server-wide) and
    ``model_settings`` (each model's) over them."""
    http, grpc = free_port(), free_port()
    root.mkdir(parents=True, exist_ok=True)
    server_settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": free_port(),
        "load_models_at_startup": True,
        **(settings or {}),
    }
    (root / "settings.json").write_text(json.dumps(server_settings))
    for name, path in models.items():
        d = root / name
        d.mkdir(exist_ok=True)
        shutil.copyfile(HERE / "mlserver_runtime" / "onnx_runtime.py", d / "onnx_runtime.py")
        (d / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "onnx_runtime.OnnxRuntime",
                    "parameters": {"uri": str(path), "version": "1"},
                    **(model_settings or {}),
                }
            )
        )
    env = dict(os.environ, EDGE_BENCH_THREADS=str(THREADS))
    mlserver = python.parent / "mlserver"
    with log.open("wb") as out:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [str(mlserver), "start", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    wait_ready(http, list(models), proc, 180)
    return Server(label, proc, http, grpc)


# ---------------------------------------------------------------- requests
def payloads(name: str, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    from edgeinfer.protocol import InferenceRequest, InferTensor, rest
    from edgeinfer.protocol import grpc_codec as codec

    req = InferenceRequest(
        [InferTensor.from_array(k, v) for k, v in feeds.items()], model_name=name
    )
    path = f"/v2/models/{name}/infer"
    js = rest.encode_request(req, binary=False)
    binary = rest.encode_request(req, binary=True)
    return {
        "rest_json": (path, js.body, js.headers),
        "rest_binary": (path, binary.body, binary.headers),
        "grpc": codec.request_to_proto(req, raw=True).SerializeToString(),
    }


def check_answers(
    server: Server, name: str, p: dict[str, Any], kinds: list[str], want: dict[str, np.ndarray]
) -> None:
    """One request of each kind; the outputs must match in-process Model.predict."""
    import grpc

    from edgeinfer.protocol import grpc_codec as codec
    from edgeinfer.protocol import rest

    for kind in kinds:
        if kind == "grpc":
            with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as ch:
                raw = ch.unary_unary(GRPC_INFER)(p["grpc"], timeout=30)
            got = codec.response_from_proto(codec.pb.ModelInferResponse.FromString(raw)).arrays()
        else:
            path, body, headers = p[kind]
            r = urllib.request.Request(
                f"http://127.0.0.1:{server.http}{path}", data=body, headers=headers
            )
            with urllib.request.urlopen(r, timeout=30) as resp:
                hl = rest.parse_header_length(resp.headers.get(rest.HEADER_LENGTH))
                got = rest.decode_response(resp.read(), hl).arrays()
        for k, v in want.items():
            np.testing.assert_allclose(
                got[k].reshape(v.shape),
                v,
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{server.name} {kind} {name} {k}",
            )


async def measure(
    server: Server, p: dict[str, Any], kind: str, concurrency: int, seconds: float, **kw: Any
) -> dict[str, Any]:
    if kind == "grpc":
        res = await run_grpc(
            f"127.0.0.1:{server.grpc}", GRPC_INFER, p["grpc"], concurrency, seconds, **kw
        )
    else:
        path, body, headers = p[kind]
        request = http_request("127.0.0.1", server.http, path, body, headers)
        res = await run_http("127.0.0.1", server.http, request, concurrency, seconds, **kw)
    return res.summary()


def _rss_sampler(server: Server) -> tuple[list[float], threading.Event, threading.Thread]:
    samples: list[float] = [server.rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append(server.rss_mb())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    return samples, stop, t


WINDOW_WARMUP_S = 0.2  # each window's fresh connections open in a burst: not recorded


async def _window(
    server: Server, p: dict[str, Any], kind: str, concurrency: int, seconds: float, backoff: Backoff
) -> Result:
    if kind == "grpc":
        target = f"127.0.0.1:{server.grpc}"
        return await run_grpc(
            target,
            GRPC_INFER,
            p["grpc"],
            concurrency,
            seconds,
            warmup_s=WINDOW_WARMUP_S,
            backoff=backoff,
        )
    path, body, headers = p[kind]
    request = http_request("127.0.0.1", server.http, path, body, headers)
    return await run_http(
        "127.0.0.1",
        server.http,
        request,
        concurrency,
        seconds,
        warmup_s=WINDOW_WARMUP_S,
        backoff=backoff,
    )


def overload(
    server: Server,
    p: dict[str, Any],
    kind: str,
    saturating: int,
    backoff: Backoff,
    min_requests: int,
    window_s: float,
    min_rounds: int = 4,
    max_rounds: int = 40,
) -> dict[str, Any]:
    """Overload at ``2 x saturating``, paired with peak at ``saturating``, window by window.

    Rounds of two windows of ``window_s`` seconds -- peak, then overload, then overload,
    then peak (ABBA), on fresh connections -- until ``min_requests`` overload answers are
    recorded, and at least ``min_rounds`` rounds. Goodput over peak is the median of the
    rounds' ratios, so the other work on a shared machine, which drifts over seconds, weighs
    on both sides of each ratio alike.
    Also recorded: the server's CPU time per successful request in both kinds of window
    (psutil, over the whole window including its short unrecorded warm-up, alike on both
    sides; a measure of what refusals cost that depends less on the machine's load) and its
    RSS over the whole run.
    """
    import psutil

    proc = psutil.Process(server.proc.pid)
    samples, stop, t = _rss_sampler(server)
    runs: dict[str, list[Result]] = {"peak": [], "overload": []}
    cpu = {"peak": 0.0, "overload": 0.0}  # server CPU seconds
    ratios: list[float] = []
    conc = {"peak": saturating, "overload": 2 * saturating}
    for k in range(max_rounds):
        done = sum(r.requests for r in runs["overload"])
        if done >= min_requests and k >= min_rounds:
            break
        pair: dict[str, Result] = {}
        for which in ("peak", "overload") if k % 2 == 0 else ("overload", "peak"):
            before = sum(proc.cpu_times()[:2])
            pair[which] = asyncio.run(_window(server, p, kind, conc[which], window_s, backoff))
            cpu[which] += sum(proc.cpu_times()[:2]) - before
            runs[which].append(pair[which])
        if pair["peak"].ok:
            ratios.append(pair["overload"].ok / pair["peak"].ok)
    stop.set()
    t.join()
    samples.append(server.rss_mb())
    peak, over = Result.merge(runs["peak"]), Result.merge(runs["overload"])
    out = over.summary()
    requests = out["requests"]

    def cpu_ms(which: str, res: Result) -> float | None:
        return round(cpu[which] / res.ok * 1e3, 4) if res.ok else None

    out.update(
        kind=kind,
        concurrency=2 * saturating,
        saturating_concurrency=saturating,
        client=backoff.label(),
        rounds=len(ratios),
        window_s=window_s,
        peak_rps=peak.summary()["rps"],
        goodput_over_peak=round(statistics.median(ratios), 3) if ratios else None,
        goodput_over_peak_rounds=[round(x, 3) for x in ratios],
        goodput_over_peak_pooled=round(out["rps"] / peak.summary()["rps"], 3) if peak.ok else None,
        rejected_share=round(out.get("rejected", 0) / requests, 3) if requests else None,
        server_cpu_ms_per_ok_peak=cpu_ms("peak", peak),
        server_cpu_ms_per_ok_overload=cpu_ms("overload", over),
        rss_mb_start=round(samples[0], 1),
        rss_mb_end=round(samples[-1], 1),
        rss_mb_max=round(max(samples), 1),
    )
    return out


SERVER_BACKOFF = Backoff("server", jitter=0.5)
CLIENTS = {  # what a client does after a refusal
    "retry_after": SERVER_BACKOFF,  # a well-behaved client: the server's Retry-After + jitter
    "instant": INSTANT,  # the harshest client: retries at once, forever
    "fixed_10ms": Backoff("fixed", fixed_s=0.01),  # a fixed pause, ignoring the server's hint
}


SCAN = (1, 2, 4, 8, 16, 32)  # concurrency levels of the saturation scan


def saturation(
    server: Server, p: dict[str, Any], kind: str, window_s: float
) -> tuple[int, dict[int, float]]:
    """The saturating concurrency: the lowest that reaches 90% of the best requests/s.

    Two passes over :data:`SCAN` in opposite orders, keeping each level's better rate (other
    work on the machine only ever slows a window down); past saturation the curve is flat,
    and the argmax of a flat, noisy curve would be a coin toss.
    """
    rates: dict[int, float] = {}
    for order in (SCAN, SCAN[::-1]):
        for c in order:
            rps = asyncio.run(measure(server, p, kind, c, window_s))["rps"]
            rates[c] = max(rates.get(c, 0.0), rps)
    best = max(rates.values())
    return min(c for c, r in rates.items() if r >= 0.9 * best), rates


def overload_suite(
    edge: Server | None,
    mlserver: Server | None,
    window_s: float,
    total: int,
    work: Path,
    tiny_feeds: dict[str, np.ndarray],
    baseline_src: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Overload at 2x the saturating concurrency (:func:`saturation`), paired with peak.

    edgeinfer runs a server of its own for this, with two copies of the tiny model:
    ``tiny`` with a tight queue (half the saturating concurrency, as an operator who keeps
    queues short would set it, so that 2x that concurrency overflows it) and ``tiny-sized``
    with the queue sized by the rule of thumb (max batch size x instances x 2 = 16). Peak is
    measured on the same server, model and protocol at the saturating concurrency, in
    windows that alternate with the overload windows (see :func:`overload`).

    With ``baseline_src`` (the ``src`` folder of another checkout, an earlier commit say),
    every edgeinfer scenario also runs against that code, right next to the current one
    (order alternating), under the key prefix ``baseline_``: a before/after comparison
    under the same conditions.
    """
    out: dict[str, Any] = {}
    scans: dict[str, Any] = {}  # the saturation scans
    if edge is not None:
        # the saturation of the main server (queue 64, never full at these concurrencies)
        p = payloads("tiny", tiny_feeds)
        sat: dict[str, int] = {}
        for kind in ("rest_json", "grpc"):
            sat[kind], rates = saturation(edge, p, kind, window_s)
            scans[f"edgeinfer_{kind}"] = {"saturating": sat[kind], "rps": rates}
            print("saturation", kind, sat[kind], rates, flush=True)
        tight = max(1, sat["rest_json"] // 2)
        sized = 8 * 1 * 2  # max_batch_size x instances x 2
        orepo = work / "overload-repo"
        for name, queue in (("tiny", tight), ("tiny-sized", sized)):
            tiny_model(orepo / name / "1" / "model.onnx")
            (orepo / name / "config.json").write_text(
                json.dumps({"queue_timeout_s": QUEUE_TIMEOUT_S, "max_queue_size": queue})
            )
        names = ["tiny", "tiny-sized"]
        targets = [start_edgeinfer(orepo, names, work / "edgeinfer-overload.log")]
        if baseline_src is not None:
            targets.append(
                start_edgeinfer(
                    orepo, names, work / "baseline.log", baseline_src, "edgeinfer-baseline"
                )
            )
        scenarios = [
            ("tiny", "rest_json", "retry_after"),
            ("tiny", "rest_json", "instant"),
            ("tiny", "rest_json", "fixed_10ms"),
            ("tiny", "grpc", "retry_after"),
            ("tiny", "grpc", "instant"),
            ("tiny-sized", "rest_json", "retry_after"),
            ("tiny-sized", "rest_json", "instant"),
            ("tiny-sized", "grpc", "retry_after"),
        ]
        try:
            for i, (model, kind, client) in enumerate(scenarios):
                p = payloads(model, tiny_feeds)
                proto = "rest" if kind == "rest_json" else "grpc"
                queue = tight if model == "tiny" else sized
                size = "tight" if model == "tiny" else "sized"
                for target in targets if i % 2 == 0 else targets[::-1]:
                    o = overload(target, p, kind, sat[kind], CLIENTS[client], total, window_s)
                    o.update(
                        server=target.name,
                        max_queue_size=queue,
                        queue_timeout_ms=QUEUE_TIMEOUT_S * 1e3,
                    )
                    prefix = "baseline_" if target.name == "edgeinfer-baseline" else ""
                    key = f"{prefix}edgeinfer_{proto}_{size}_queue{queue}_{client}"
                    out[key] = o
                    print(key, json.dumps(o), flush=True)
        finally:
            for target in targets:
                target.stop()
    if mlserver is not None:
        p = payloads("tiny", tiny_feeds)
        c, rates = saturation(mlserver, p, "rest_json", window_s)
        scans["mlserver_rest_json"] = {"saturating": c, "rps": rates}
        print("saturation mlserver", c, rates, flush=True)
        o = overload(mlserver, p, "rest_json", c, SERVER_BACKOFF, total, window_s)
        o.update(
            server="mlserver",
            note="MLServer queues without bound and never refuses, so every client behaves "
            "the same",
        )
        out["mlserver_rest"] = o
        print("mlserver_rest", json.dumps(o), flush=True)
    return out, scans


FLOORS = (  # (server mode, protocol): see floor_servers.py
    ("uvicorn-503", "rest_json"),
    ("edgeinfer-refuse", "rest_json"),
    ("grpc-ok", "grpc"),
    ("grpc-abort", "grpc"),
    ("edgeinfer-refuse", "grpc"),
)
FLOOR_CONCURRENCY = (16, 32)  # the tiny model's overload runs use one of these


def _start_floor(mode: str, repo: Path, log: Path) -> Server:
    port = free_port()
    while True:  # edgeinfer-refuse also takes port + 1 for gRPC
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    cmd = [sys.executable, str(HERE / "floor_servers.py"), mode, str(port), str(repo)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    grpc = port + 1 if mode == "edgeinfer-refuse" else port
    deadline = time.monotonic() + 60
    while True:  # ready once it accepts a connection on the port the load will use
        try:
            with socket.create_connection(("127.0.0.1", grpc), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{mode} on port {port} did not start (see {log})") from None
            time.sleep(0.2)
    return Server(mode, proc, port, grpc)


def floor_suite(work: Path, window_s: float, rounds: int = 3) -> dict[str, Any]:
    """What a refusal costs: servers that refuse every request (``floor_servers.py``).

    Each (server, protocol) of :data:`FLOORS` under the load generator's instant-retry
    clients at the tiny model's overload concurrencies, in ``rounds`` rounds of windows (order
    alternating): answers per second, latency, and server CPU time per answer. Bare uvicorn
    and bare grpc.aio are the floor of any Python server on those stacks; ``edgeinfer-refuse``
    is edgeinfer's whole refusal path on the same load.
    """
    import psutil

    repo = work / "floor-repo"
    tiny_model(repo / "tiny" / "1" / "model.onnx")
    p = payloads("tiny", {"x": np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)})
    servers = {m: _start_floor(m, repo, work / f"floor-{m}.log") for m in dict(FLOORS)}
    cases = [(m, k, c) for m, k in FLOORS for c in FLOOR_CONCURRENCY]
    runs: dict[tuple[str, str, int], list[tuple[Result, float]]] = {f: [] for f in cases}
    try:
        for r in range(rounds):
            for mode, kind, c in cases if r % 2 == 0 else cases[::-1]:
                proc = psutil.Process(servers[mode].proc.pid)
                before = sum(proc.cpu_times()[:2])
                res = asyncio.run(_window(servers[mode], p, kind, c, window_s, INSTANT))
                cpu = sum(proc.cpu_times()[:2]) - before
                runs[mode, kind, c].append((res, cpu))
    finally:
        for server in servers.values():
            server.stop()
    out: dict[str, Any] = {}
    for (mode, kind, c), pairs in runs.items():
        merged = Result.merge([r for r, _ in pairs])
        row = {k: v for k, v in merged.summary().items() if not isinstance(v, list)}
        answered = sum(r.requests for r, _ in pairs)
        warm = 1 + WINDOW_WARMUP_S / window_s  # the CPU time covers the unrecorded warm-up too
        cpu_s = sum(c for _, c in pairs)
        row.update(
            concurrency=c,
            client=INSTANT.label(),
            server_cpu_ms_per_answer=round(cpu_s / (answered * warm) * 1e3, 4),
        )
        key = f"{mode}_{'rest' if kind == 'rest_json' else 'grpc'}_c{c}"
        out[key] = row
        print("floor", key, json.dumps(row), flush=True)
    return out


GRPC_FLOORS = {  # floor_servers.py mode -> what it is
    "grpc-infer": "grpc.aio, message objects: FromString, one run, SerializeToString",
    "grpc-bytes-infer": "grpc.aio, bytes: the wire walked for the inputs, answer bytes written",
    "grpc-sync-infer-1": "grpc.server (sync), 1 thread, grpc-infer's handler",
    "grpc-sync-infer-2": "grpc.server (sync), 2 threads, grpc-infer's handler",
    "grpc-sync-infer-4": "grpc.server (sync), 4 threads, grpc-infer's handler",
    "grpc-sync-loop-4": "grpc.server (sync), 4 threads, the model run on an event loop's thread",
}
GRPC_FLOOR_MLSERVER = ("mlserver_pw0", "mlserver_pw0_batch8")  # its best gRPC settings here


def grpc_floor_suite(
    work: Path,
    seconds: float,
    rounds: int,
    mlserver_python: Path,
    baseline_src: Path | None = None,
) -> dict[str, Any]:
    """gRPC answers, tiny model: edgeinfer, the best MLServer and the floors of grpc's two
    Python servers (:data:`GRPC_FLOORS`), every one per round at 1 and 32 clients.

    Each round measures every server in turn (the order rotating round by round) with server
    CPU per answer; the figures are each server's throughput over the best MLServer setting
    *in the same round*, and edgeinfer's over each floor's. A floor at >= 2x MLServer where
    bare grpc.aio is not would show a Python gRPC stack that could meet issue 20's target.
    """
    import edgeinfer
    from server_peers import (
        MLSERVER_SETTINGS,
        measure_window,
        start_mlserver_with,
    )

    repo = work / "repo"
    tiny = tiny_model(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.json").write_text(json.dumps({"queue_timeout_s": QUEUE_TIMEOUT_S}))
    feeds = {"x": np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)}
    m = edgeinfer.load(tiny, providers=["cpu"], threads=THREADS)
    want = m.predict(feeds)
    m.close()
    p = payloads("tiny", feeds)
    out: dict[str, Any] = {"servers": {}, "errors": {}}
    servers: list[Server] = []
    try:
        servers.append(start_edgeinfer(repo, ["tiny"], work / "edgeinfer.log"))
        out["servers"]["edgeinfer"] = "defaults (max_batch_size 8, no queue delay)"
        if baseline_src is not None:
            servers.append(
                start_edgeinfer(
                    repo,
                    ["tiny"],
                    work / "baseline.log",
                    src=baseline_src,
                    name="edgeinfer_baseline",
                )
            )
            out["servers"]["edgeinfer_baseline"] = f"edgeinfer from {baseline_src}"
        for setting in MLSERVER_SETTINGS:
            if setting.name not in GRPC_FLOOR_MLSERVER or not mlserver_python.is_file():
                continue
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
                out["errors"][setting.name] = str(exc)
        for mode, label in GRPC_FLOORS.items():
            floor = _start_floor(mode, repo, work / f"{mode}.log")
            floor.name = mode
            servers.append(floor)
            out["servers"][mode] = label
        for server in servers:
            check_answers(server, "tiny", p, ["grpc"], want)
        per_round: list[dict[str, Any]] = []
        for r in range(rounds):
            row: dict[str, Any] = {"round": r, "load_average_1m": round(os.getloadavg()[0], 2)}
            for c in (1, 32):
                order = servers[r % len(servers) :] + servers[: r % len(servers)]
                case = {s.name: measure_window(s, p, "grpc", c, seconds) for s in order}
                summary: dict[str, Any] = {
                    n: {k: v.get(k) for k in ("rps", "p50_ms", "server_cpu_ms_per_answer")}
                    for n, v in case.items()
                }
                mls = {n: v["rps"] for n, v in case.items() if n.startswith("mlserver")}
                if mls:
                    best = max(mls, key=mls.__getitem__)
                    summary["best_mlserver"] = best
                    summary["over_best_mlserver"] = {
                        n: round(v["rps"] / max(mls[best], 1e-9), 3)
                        for n, v in case.items()
                        if not n.startswith("mlserver")
                    }
                summary["edgeinfer_over_floor"] = {
                    f: round(case["edgeinfer"]["rps"] / max(case[f]["rps"], 1e-9), 3)
                    for f in GRPC_FLOORS
                }
                row[f"grpc_c{c}"] = summary
                print(f"round {r} grpc c{c}", json.dumps(summary), flush=True)
            per_round.append(row)
    finally:
        for server in servers:
            server.stop()
    out["rounds"] = per_round
    summary_out: dict[str, Any] = {}
    for c in (1, 32):
        rows = [row[f"grpc_c{c}"] for row in per_round]
        entry: dict[str, Any] = {}
        for s in servers:
            rps = [row[s.name]["rps"] for row in rows]
            cpu = [row[s.name]["server_cpu_ms_per_answer"] for row in rows]
            cpu = [x for x in cpu if x is not None]
            entry[s.name] = {
                "rps_median": round(statistics.median(rps), 1),
                "rps_range": [min(rps), max(rps)],
                "server_cpu_ms_per_answer_median": (
                    round(statistics.median(cpu), 4) if cpu else None
                ),
            }
            ratios = [
                row["over_best_mlserver"][s.name]
                for row in rows
                if s.name in row.get("over_best_mlserver", {})
            ]
            if ratios:
                entry[s.name]["over_best_mlserver_per_round"] = ratios
                entry[s.name]["over_best_mlserver_min"] = min(ratios)
                entry[s.name]["at_2x_best_mlserver_every_round"] = min(ratios) >= 2.0
        summary_out[f"grpc_c{c}"] = entry
    out["summary"] = summary_out
    return out


BIG_OVERLOAD_TIMEOUT_S = 1.0  # MiniLM's queue timeout in its overload runs (~15 ms per row)
BIG_SCENARIOS = (
    ("rest_json", "retry_after"),
    ("rest_json", "instant"),
    ("grpc", "retry_after"),
    ("grpc", "instant"),
)


def overload_big_suite(work: Path, window_s: float, total: int) -> dict[str, Any]:
    """The overload scenarios on MiniLM INT8, where what a request costs is the model's run.

    The tiny model's runs show what a refusal costs against an answer that is nearly all
    HTTP; these show what the bounded queue keeps of a model that does real work. As for
    the tiny model: the saturating concurrency from a scan on a server with a long queue,
    then a second server whose queue holds half that many requests, with a queue timeout
    of :data:`BIG_OVERLOAD_TIMEOUT_S`; batches capped at the best in-process batch size
    (see below for the saturating concurrency).
    """
    repo, tight_repo = work / "big-repo", work / "big-tight-repo"
    (repo / "big" / "1").mkdir(parents=True)
    name, path, feeds = second_model(repo / "big" / "1" / "model.onnx")
    batch = int(in_process(path, feeds, 1.0)["best_batch"])
    p = payloads("big", feeds)
    out: dict[str, Any] = {"model": name, "max_batch_size": batch, "scenarios": {}}
    (repo / "big" / "config.json").write_text(
        json.dumps({"queue_timeout_s": BIG_QUEUE_TIMEOUT_S, "max_batch_size": batch})
    )
    server = start_edgeinfer(repo, ["big"], work / "big-scan.log")
    sat: dict[str, int] = {}
    try:
        for kind in ("rest_json", "grpc"):
            sat[kind], rates = saturation(server, p, kind, 1.5)
            out[f"saturation_{kind}"] = {"saturating": sat[kind], "rps": rates}
            print("saturation big", kind, sat[kind], rates, flush=True)
    finally:
        server.stop()
    # MiniLM's curve is nearly flat (one client already reaches ~90% of the best rate), so
    # the scan's knee is 1-2 clients, where a queue of half of it would hold less than a
    # batch. A batching server is saturated once one batch runs while the next waits: one
    # concurrency for both protocols, at least 2 batches' worth, and a queue of one batch.
    saturating = max(*sat.values(), 2 * batch)
    out["saturating_concurrency"] = saturating
    tight = max(1, saturating // 2)
    (tight_repo / "big" / "1").mkdir(parents=True)
    shutil.copyfile(path, tight_repo / "big" / "1" / "model.onnx")
    (tight_repo / "big" / "config.json").write_text(
        json.dumps(
            {
                "queue_timeout_s": BIG_OVERLOAD_TIMEOUT_S,
                "max_queue_size": tight,
                "max_batch_size": batch,
            }
        )
    )
    server = start_edgeinfer(tight_repo, ["big"], work / "big-overload.log")
    try:
        # unrecorded: the first batches of 4 rows grow ONNX Runtime's arena (~25 MB), once;
        # "RSS flat" is about what sustained overload does, not about first use
        for kind in ("rest_json", "grpc"):
            asyncio.run(measure(server, p, kind, 2 * saturating, window_s))
        for kind, client in BIG_SCENARIOS:
            o = overload(server, p, kind, saturating, CLIENTS[client], total, window_s)
            o.update(
                server="edgeinfer",
                max_queue_size=tight,
                queue_timeout_ms=BIG_OVERLOAD_TIMEOUT_S * 1e3,
            )
            key = f"edgeinfer_{'rest' if kind == 'rest_json' else 'grpc'}_queue{tight}_{client}"
            out["scenarios"][key] = o
            print(key, json.dumps(o), flush=True)
    finally:
        server.stop()
    return out


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 s per point instead of 3 s")
    ap.add_argument(
        "--overload-only",
        action="store_true",
        help="only the overload runs (and their saturation scans); merged into the existing "
        "results file",
    )
    ap.add_argument(
        "--big-only",
        action="store_true",
        help="only the second model (MiniLM INT8): in-process and both servers; merged into "
        "the existing results file",
    )
    ap.add_argument("--overload-requests", type=int, default=10_000)
    ap.add_argument(
        "--overload-big-only",
        action="store_true",
        help="only the overload runs on MiniLM INT8 (see overload_big_suite); merged into the "
        "existing results file",
    )
    ap.add_argument(
        "--floor-only",
        action="store_true",
        help="only the refusal floor (see floor_suite); merged into the existing results file",
    )
    ap.add_argument(
        "--paired-rounds", type=int, default=5, help="rounds of the paired MiniLM measurement"
    )
    ap.add_argument(
        "--peers-only",
        action="store_true",
        help="only the peers at their defaults and at their best (server_peers.py): tiny "
        "model, REST and gRPC, concurrency 1 and 32, paired rounds; writes server_peers.json",
    )
    ap.add_argument("--peer-rounds", type=int, default=3, help="rounds of --peers-only")
    ap.add_argument(
        "--grpc-floors-only",
        action="store_true",
        help="only the gRPC answer floors beside edgeinfer and the best MLServer (see "
        "grpc_floor_suite; rounds: --peer-rounds); writes server_grpc_floors.json",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="the src folder of another edgeinfer checkout: run the overload scenarios "
        "against it too, for a before/after comparison",
    )
    ap.add_argument(
        "--peer-workload",
        choices=["tiny", "minilm", "all"],
        default="all",
        help="the model(s) of --peers-only: tiny writes server_peers.json, minilm "
        "server_peers_minilm.json",
    )
    ap.add_argument("--no-triton", action="store_true", help="--peers-only without Triton")
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=Path(os.environ.get("EDGEINFER_PEERS_DIR", "/tmp")),
        help="where benchmarks/peers/setup.sh made the peers' environments (default /tmp)",
    )
    ap.add_argument("--mlserver-python", type=Path, help="default: in --peers-dir")
    args = ap.parse_args()
    if args.mlserver_python is None:
        args.mlserver_python = args.peers_dir / "mlserver-venv" / "bin" / "python"
    seconds = 1.0 if args.quick else 3.0
    if args.peers_only:
        import server_peers

        missing = server_peers.missing_peers(
            args.peers_dir, args.mlserver_python, not args.no_triton
        )
        if missing:
            print(f"bench_server.py: {missing}", file=sys.stderr)
            sys.exit(2)
        for workload in server_peers.WORKLOADS:
            if args.peer_workload in (workload, "all"):
                path = server_peers.run(
                    seconds, args.peer_rounds, args.mlserver_python, not args.no_triton,
                    workload=workload, peers_dir=args.peers_dir,
                )  # fmt: skip
                print("wrote", path)
        return
    if args.grpc_floors_only:
        gc.collect()
        gc.freeze()  # the load generator's heap, as below
        load_start = os.getloadavg()[0]
        work = Path(tempfile.mkdtemp(prefix="bench-grpc-floors-"))
        try:
            res = grpc_floor_suite(
                work, seconds, args.peer_rounds, args.mlserver_python, args.baseline_src
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        res["conditions"] = {
            "model": "tiny MLP (4 -> 8 -> 3), one row per request, raw tensor contents",
            "seconds_per_window": seconds,
            "rounds": args.peer_rounds,
            "threads_per_model": THREADS,
            "load_generator": "closed loop, grpc.aio on uvloop (4 channels), in the "
            "benchmark's process, sharing the machine's cores with every server",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        }
        print("wrote", write("server_grpc_floors", res))
        return
    load_start = os.getloadavg()[0]  # other work on the machine skews every figure
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    # the runs that replace one part of the stored results, under their key
    parts: dict[str, tuple[bool, Callable[[], dict[str, Any]]]] = {
        "refusal_floor": (args.floor_only, lambda: floor_suite(work, seconds)),
        "overload_big": (args.overload_big_only, lambda: overload_big_suite(work, seconds, 2_000)),
    }
    for key, (wanted, suite) in parts.items():
        if not wanted:
            continue
        gc.collect()
        gc.freeze()  # see below
        try:
            part = suite()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stored = json.loads((HERE / "results" / "server.json").read_text())
        stored[key] = {
            **part,
            "window_s": seconds,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        }
        stored["summary"] = summarize(stored)
        print("wrote", write("server", stored))
        return
    repo = work / "repo"
    tiny = tiny_model(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.json").write_text(json.dumps({"queue_timeout_s": QUEUE_TIMEOUT_S}))
    tiny_feeds = {"x": np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)}
    models = {} if args.big_only else {"tiny": (tiny, tiny_feeds)}
    big_name = big = big_feeds = None
    if not args.overload_only:
        (repo / "big" / "1").mkdir(parents=True)
        big_name, big, big_feeds = second_model(repo / "big" / "1" / "model.onnx")
        models["big"] = (big, big_feeds)
        if args.big_only:
            shutil.rmtree(repo / "tiny")

    import edgeinfer

    expected = {}
    baseline = {}
    for name, (path, feeds) in models.items():
        m = edgeinfer.load(path, providers=["cpu"], threads=THREADS)
        expected[name] = m.predict(feeds)
        m.close()
        if not args.overload_only:
            baseline[name] = in_process(path, feeds, 0.5 if args.quick else 1.5)
            print(f"in-process {name}: {baseline[name]}", flush=True)
    big_batch = None
    if "big" in baseline:
        # Serve the big model at the batch size it runs fastest at here, as a model analyzer
        # would configure it: MiniLM INT8 on one thread gains nothing from batches past ~4.
        big_batch = int(baseline["big"]["best_batch"])
        (repo / "big" / "config.json").write_text(
            json.dumps(
                {
                    "queue_timeout_s": BIG_QUEUE_TIMEOUT_S,
                    "max_queue_size": 64,
                    "max_batch_size": big_batch,
                }
            )
        )

    # The load generator's own full garbage collections (~10 ms with numpy and onnx loaded)
    # would read as server latency; its long-lived heap is frozen out of them, as the
    # server's is (``edgeinfer serve --freeze-heap``).
    gc.collect()
    gc.freeze()
    servers: list[Server] = []
    results: dict[str, Any] = {"runs": [], "in_process": baseline, "second_model": big_name}
    edge = mlserver = None
    try:
        edge = start_edgeinfer(repo, list(models), work / "edgeinfer.log")
        servers.append(edge)
        if args.mlserver_python.is_file():
            try:
                mlserver = start_mlserver(
                    args.mlserver_python,
                    work / "mlserver",
                    {n: p for n, (p, _) in models.items()},
                    work / "mlserver.log",
                )
                servers.append(mlserver)
            except RuntimeError as exc:
                results["mlserver_error"] = (
                    f"{exc}; log: {(work / 'mlserver.log').read_text()[-2000:]}"
                )
        else:
            results["mlserver_error"] = f"{args.mlserver_python} not found"
            print(
                f"bench_server.py: {args.mlserver_python} not found, MLServer left out; create "
                f"the peers' environments with benchmarks/peers/setup.sh {args.peers_dir}",
                file=sys.stderr,
            )
        for server in servers:
            kinds = ["rest_json", "grpc"]
            if server.name == "edgeinfer" and not args.overload_only:
                kinds.append("rest_binary")
            if server.name == "mlserver" and args.overload_only:
                kinds = ["rest_json"]  # all its overload run needs
            for name, (_, feeds) in models.items():
                p = payloads(name, feeds)
                check_answers(server, name, p, kinds, expected[name])
                if args.overload_only:
                    continue  # the overload suite scans saturation itself
                for kind in kinds:
                    for c in CONCURRENCY:
                        r = asyncio.run(measure(server, p, kind, c, seconds))
                        r.update(server=server.name, model=name, kind=kind, concurrency=c)
                        results["runs"].append(r)
                        print(json.dumps(r), flush=True)
        if big is not None and big_feeds is not None and big_batch is not None:
            results["big_paired"] = paired_big(
                edge, big, big_feeds, big_batch, ["rest_binary", "grpc", "rest_json"],
                rounds=2 if args.quick else args.paired_rounds, seconds=seconds,
            )  # fmt: skip
        if not args.big_only:
            results["overload"], results["overload_saturation"] = overload_suite(
                edge,
                mlserver,
                seconds / 2,
                args.overload_requests,
                work,
                tiny_feeds,
                args.baseline_src,
            )
    finally:
        for server in servers:
            server.stop()
    conditions = {
        "seconds_per_point": seconds,
        "threads_per_model": THREADS,
        "edgeinfer": {
            "max_batch_size": {"tiny": 8, "big": big_batch},
            "max_queue_delay_us": 0,
            "instances": 1,
            "max_queue_size": 64,
            "queue_timeout_s": {"tiny": QUEUE_TIMEOUT_S, "big": BIG_QUEUE_TIMEOUT_S},
        },
        "mlserver": "defaults (parallel_workers=1, no adaptive batching), custom ONNX runtime",
        "load_generator": "closed loop, asyncio + uvloop, raw HTTP/1.1 keep-alive / grpc.aio",
        "overload_clients": {k: b.label() for k, b in CLIENTS.items()},
        "overload_baseline_src": None if args.baseline_src is None else str(args.baseline_src),
        "note": "one machine: load generator and server share its cores; figures are noisy",
        "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    if args.overload_only:
        previous = json.loads((HERE / "results" / "server.json").read_text())
        if "machine" in previous:
            previous["machine_main_runs"] = previous.pop("machine")
        previous["overload"] = results["overload"]
        previous["overload_saturation"] = results["overload_saturation"]
        previous.pop("overload_saturation_runs", None)
        previous["overload_conditions"] = {**conditions, "date": time.strftime("%Y-%m-%d %H:%M")}
        results = previous
    else:
        assert big is not None and big_feeds is not None
        again = in_process(big, big_feeds, 0.5 if args.quick else 1.5)
        results["in_process_big_after_servers"] = again
        # the higher of before/after: a slow moment of the machine does not flatter the server
        baseline["big"]["best_rows_per_s"] = max(
            baseline["big"]["best_rows_per_s"], again["best_rows_per_s"]
        )
        results["conditions"] = conditions
        if args.big_only:
            previous = json.loads((HERE / "results" / "server.json").read_text())
            previous["runs"] = [r for r in previous["runs"] if r["model"] != "big"]
            previous["runs"] += results["runs"]
            previous["in_process"]["big"] = baseline["big"]
            previous["in_process_big_after_servers"] = again
            previous["big_paired"] = results["big_paired"]
            previous["big_conditions"] = {**conditions, "date": time.strftime("%Y-%m-%d %H:%M")}
            results = previous
    results["summary"] = summarize(results)
    print(json.dumps(results["summary"], indent=2))
    print("wrote", write("server", results))
    shutil.rmtree(work, ignore_errors=True)


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    def run(server: str, model: str, kind: str, c: int) -> dict[str, Any] | None:
        for r in res["runs"]:
            if (r["server"], r["model"], r["kind"], r["concurrency"]) == (server, model, kind, c):
                return r  # type: ignore[no-any-return]
        return None

    out: dict[str, Any] = {}
    b = run("edgeinfer", "tiny", "rest_binary", 1)
    if b and "p50_ms" in b:
        out["tiny_rest_binary_p50_added_ms"] = round(
            b["p50_ms"] - res["in_process"]["tiny"]["p50_ms_batch1"], 3
        )
    for kind in ("rest_json", "grpc"):
        e, m = run("edgeinfer", "tiny", kind, 32), run("mlserver", "tiny", kind, 32)
        if e and m and m["rps"]:
            out[f"tiny_{kind}_c32_edgeinfer_over_mlserver"] = round(e["rps"] / m["rps"], 2)
    best = res["in_process"]["big"]["best_rows_per_s"]
    for kind in ("rest_binary", "grpc", "rest_json"):
        e = run("edgeinfer", "big", kind, 32)
        if e:
            out[f"{res['second_model']}_{kind}_c32_over_best_in_process"] = round(
                e["rps"] / best, 3
            )
    paired = res.get("big_paired")
    if paired:
        for kind in ("rest_binary", "grpc", "rest_json"):
            key = f"{kind}_over_in_process_median"
            if key in paired:
                out[f"{res['second_model']}_{kind}_c32_over_in_process_paired_median"] = paired[key]
    overloads = [(name, o) for name, o in res.get("overload", {}).items()]
    big = res.get("overload_big", {})
    overloads += [(f"big_{name}", o) for name, o in big.get("scenarios", {}).items()]
    for name, o in overloads:
        row = {
            k: o.get(k)
            for k in (
                "kind",
                "client",
                "concurrency",
                "max_queue_size",
                "queue_timeout_ms",
                "rps",
                "peak_rps",
                "goodput_over_peak",
                "rejected_share",
                "rejected_p50_ms",
                "rejected_p99_ms",
                "retry_after_p50_ms",
                "p99_ms",
                "rss_mb_start",
                "rss_mb_end",
                "rss_mb_max",
            )
        }
        if o.get("server", "").startswith("edgeinfer"):  # the targets
            timeout = o["queue_timeout_ms"]
            row["targets_met"] = {
                "goodput_over_peak>=0.9": (o.get("goodput_over_peak") or 0) >= 0.9,
                "rejected_p99_ms<=5": (
                    None if not o.get("rejected") else o["rejected_p99_ms"] <= 5.0
                ),  # None: nothing was refused
                "p99_ms<=queue_timeout": o.get("p99_ms", 0.0) <= timeout,
                "rss_growth_mb<=5": o["rss_mb_max"] - o["rss_mb_start"] <= 5.0,
            }
        out[f"overload_{name}"] = row
    for name, f in res.get("refusal_floor", {}).items():
        if isinstance(f, dict):
            out[f"refusal_floor_{name}"] = {
                k: f.get(k)
                for k in ("rps", "p50_ms", "p99_ms", "rejected_p50_ms", "rejected_p99_ms")
                if f.get(k) is not None
            } | {"server_cpu_ms_per_answer": f["server_cpu_ms_per_answer"]}
    return out


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    main()
