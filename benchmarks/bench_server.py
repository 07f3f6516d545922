"""The edge server against Seldon MLServer, with one load generator, on this machine.

Both servers run as separate processes on 127.0.0.1 and serve the same ONNX files with the
same ONNX Runtime settings (1 intra-op thread, spinning off); MLServer runs in its own
virtual environment (default: /tmp/mlserver-venv, ``pip install mlserver onnxruntime``)
with a minimal custom runtime (benchmarks/mlserver_runtime/onnx_runtime.py) and its default
settings otherwise (one parallel inference worker process, no adaptive batching). edgeinfer
runs with its defaults (dynamic batching up to 8 rows, no added queue delay, one instance)
plus a bounded queue (32 requests) and a 100 ms queue timeout.

Measured (issue targets in brackets):
- tiny model (MLP) and MiniLM INT8 (or the digits CNN if MiniLM is missing): requests/s and
  p50/p90/p99 at concurrency 1, 8, 32, REST (JSON tensors, both servers; binary tensors,
  edgeinfer) and gRPC (raw tensor contents);
- tiny, REST binary, concurrency 1: p50 added over in-process ``Model.predict`` [<= 1 ms];
- tiny, concurrency 32: edgeinfer / MLServer throughput, REST and gRPC [>= 2x];
- MiniLM INT8, concurrency 32: server throughput / best in-process throughput [>= 90%];
- overload at 2x the saturating concurrency, 10,000 requests: goodput / peak [>= 90%],
  rejection latency [<= 5 ms], p99 of accepted [<= queue timeout], RSS over the run [flat].

The load generator (benchmarks/server_loadgen.py) is closed-loop asyncio on uvloop: raw
HTTP/1.1 keep-alive connections, or grpc.aio. It shares the machine's cores with the servers.
Run: .venv/bin/python benchmarks/bench_server.py [--quick] [--mlserver-python PATH]
Writes benchmarks/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write  # noqa: E402
from server_loadgen import http_request, run_grpc, run_http  # noqa: E402

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
        times = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 20:
            t = time.perf_counter()
            model.predict(batched)
            times.append(time.perf_counter() - t)
        rate = batch / float(np.median(times))
        if batch == 1:
            out["p50_ms_batch1"] = round(float(np.median(times)) * 1e3, 4)
        out[f"rows_per_s_batch{batch}"] = round(rate, 1)
        best = max(best, rate)
    out["best_rows_per_s"] = round(best, 1)
    model.close()
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
        return sum(x.memory_info().rss for x in procs if x.is_running()) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_edgeinfer(repo: Path, models: list[str], log: Path) -> Server:
    http, grpc = free_port(), free_port()
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
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_ready(http, models, proc, 120)
    return Server("edgeinfer", proc, http, grpc)


def start_mlserver(python: Path, root: Path, models: dict[str, Path], log: Path) -> Server:
    http, grpc = free_port(), free_port()
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": free_port(),
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings))
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
                }
            )
        )
    env = dict(os.environ, EDGE_BENCH_THREADS=str(THREADS))
    mlserver = python.parent / "mlserver"
    proc = subprocess.Popen(
        [str(mlserver), "start", str(root)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
    )
    wait_ready(http, list(models), proc, 180)
    return Server("mlserver", proc, http, grpc)


# ---------------------------------------------------------------- requests
def payloads(name: str, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    from edgeinfer.protocol import InferenceRequest, InferTensor, rest
    from edgeinfer.protocol import grpc_codec as gc

    req = InferenceRequest(
        [InferTensor.from_array(k, v) for k, v in feeds.items()], model_name=name
    )
    path = f"/v2/models/{name}/infer"
    js = rest.encode_request(req, binary=False)
    binary = rest.encode_request(req, binary=True)
    return {
        "rest_json": (path, js.body, js.headers),
        "rest_binary": (path, binary.body, binary.headers),
        "grpc": gc.request_to_proto(req, raw=True).SerializeToString(),
    }


def check_answers(
    server: Server, name: str, p: dict[str, Any], kinds: list[str], want: dict[str, np.ndarray]
) -> None:
    """One request of each kind; the outputs must match in-process Model.predict."""
    import grpc

    from edgeinfer.protocol import grpc_codec as gc
    from edgeinfer.protocol import rest

    for kind in kinds:
        if kind == "grpc":
            with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as ch:
                raw = ch.unary_unary(GRPC_INFER)(p["grpc"], timeout=30)
            got = gc.response_from_proto(gc.pb.ModelInferResponse.FromString(raw)).arrays()
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


async def overload(
    server: Server,
    p: dict[str, Any],
    concurrency: int,
    total: int,
    peak_rps: float,
    backoff_s: float = 0.0,
) -> dict[str, Any]:
    """``total`` requests at ``concurrency``, sampling the server's RSS as they go."""
    samples: list[float] = [server.rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append(server.rss_mb())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    path, body, headers = p["rest_json"]
    request = http_request("127.0.0.1", server.http, path, body, headers)
    res = await run_http(
        "127.0.0.1", server.http, request, concurrency, 0, max_requests=total, backoff_s=backoff_s
    )
    stop.set()
    t.join()
    samples.append(server.rss_mb())
    out = res.summary()
    out.update(
        concurrency=concurrency,
        client_backoff_ms=backoff_s * 1e3,
        goodput_over_peak=round(out["rps"] / peak_rps, 3) if peak_rps else None,
        rss_mb_start=round(samples[0], 1),
        rss_mb_end=round(samples[-1], 1),
        rss_mb_max=round(max(samples), 1),
    )
    return out


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 s per point instead of 3 s")
    ap.add_argument("--mlserver-python", type=Path, default=Path("/tmp/mlserver-venv/bin/python"))
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 3.0
    load_start = os.getloadavg()[0]  # other work on the machine skews every figure
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    repo = work / "repo"
    tiny = tiny_model(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.json").write_text(json.dumps({"queue_timeout_s": QUEUE_TIMEOUT_S}))
    (repo / "big" / "1").mkdir(parents=True)
    (repo / "big" / "config.json").write_text(
        json.dumps({"queue_timeout_s": BIG_QUEUE_TIMEOUT_S, "max_queue_size": 64})
    )
    big_name, big, big_feeds = second_model(repo / "big" / "1" / "model.onnx")
    tiny_feeds = {"x": np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)}
    models = {"tiny": (tiny, tiny_feeds), "big": (big, big_feeds)}

    import edgeinfer

    expected = {}
    baseline = {}
    for name, (path, feeds) in models.items():
        m = edgeinfer.load(path, providers=["cpu"], threads=THREADS)
        expected[name] = m.predict(feeds)
        m.close()
        baseline[name] = in_process(path, feeds, 0.5 if args.quick else 1.5)
        print(f"in-process {name}: {baseline[name]}", flush=True)

    servers: list[Server] = []
    results: dict[str, Any] = {"runs": [], "in_process": baseline, "second_model": big_name}
    try:
        servers.append(start_edgeinfer(repo, list(models), work / "edgeinfer.log"))
        if args.mlserver_python.is_file():
            try:
                servers.append(
                    start_mlserver(
                        args.mlserver_python,
                        work / "mlserver",
                        {n: p for n, (p, _) in models.items()},
                        work / "mlserver.log",
                    )
                )
            except RuntimeError as exc:
                results["mlserver_error"] = (
                    f"{exc}; log: {(work / 'mlserver.log').read_text()[-2000:]}"
                )
        else:
            results["mlserver_error"] = f"{args.mlserver_python} not found"
        for server in servers:
            kinds = ["rest_json", "grpc"] + (["rest_binary"] if server.name == "edgeinfer" else [])
            for name, (_, feeds) in models.items():
                p = payloads(name, feeds)
                check_answers(server, name, p, kinds, expected[name])
                for kind in kinds:
                    for c in CONCURRENCY:
                        r = asyncio.run(measure(server, p, kind, c, seconds))
                        r.update(server=server.name, model=name, kind=kind, concurrency=c)
                        results["runs"].append(r)
                        print(json.dumps(r), flush=True)
        results["overload"] = {}
        for server in list(servers):
            runs = [
                r
                for r in results["runs"]
                if r["server"] == server.name and r["model"] == "tiny" and r["kind"] == "rest_json"
            ]
            peak = max(runs, key=lambda r: r["rps"])
            target = server
            if server.name == "edgeinfer":
                # an operator's bound: half the saturating concurrency may wait, so that
                # 2x that concurrency overflows it (8 rows run while the queue fills)
                queue = max(1, peak["concurrency"] // 2)
                orepo = work / "overload-repo"
                shutil.copytree(repo / "tiny", orepo / "tiny")
                (orepo / "tiny" / "config.json").write_text(
                    json.dumps({"queue_timeout_s": QUEUE_TIMEOUT_S, "max_queue_size": queue})
                )
                target = start_edgeinfer(orepo, ["tiny"], work / "edgeinfer-overload.log")
                servers.append(target)
            for backoff in (0.0, 0.01):
                o = asyncio.run(
                    overload(
                        target,
                        payloads("tiny", tiny_feeds),
                        2 * peak["concurrency"],
                        10_000,
                        peak["rps"],
                        backoff,
                    )
                )
                o["peak_rps"] = peak["rps"]
                o["saturating_concurrency"] = peak["concurrency"]
                if server.name == "edgeinfer":
                    o["max_queue_size"] = queue
                key = server.name + ("_client_backoff_10ms" if backoff else "")
                results["overload"][key] = o
                print(key, "overload", json.dumps(o), flush=True)
                if server.name != "edgeinfer":
                    break  # nothing is refused there: a client backoff changes nothing
    finally:
        for server in servers:
            server.stop()
    again = in_process(big, big_feeds, 0.5 if args.quick else 1.5)
    results["in_process_big_after_servers"] = again
    # the higher of before/after: a slow moment of the machine does not flatter the server
    baseline["big"]["best_rows_per_s"] = max(
        baseline["big"]["best_rows_per_s"], again["best_rows_per_s"]
    )
    results["summary"] = summarize(results)
    results["conditions"] = {
        "seconds_per_point": seconds,
        "threads_per_model": THREADS,
        "edgeinfer": {
            "max_batch_size": 8,
            "max_queue_delay_us": 0,
            "instances": 1,
            "max_queue_size": 64,
            "queue_timeout_s": {"tiny": QUEUE_TIMEOUT_S, "big": BIG_QUEUE_TIMEOUT_S},
        },
        "mlserver": "defaults (parallel_workers=1, no adaptive batching), custom ONNX runtime",
        "load_generator": "closed loop, asyncio + uvloop, raw HTTP/1.1 keep-alive / grpc.aio",
        "note": "one machine: load generator and server share its cores; figures are noisy",
        "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
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
    for name, o in res.get("overload", {}).items():
        out[f"overload_{name}"] = {
            k: o.get(k)
            for k in (
                "concurrency",
                "client_backoff_ms",
                "max_queue_size",
                "rps",
                "goodput_over_peak",
                "rejected",
                "rejected_p50_ms",
                "rejected_p99_ms",
                "p99_ms",
                "rss_mb_start",
                "rss_mb_end",
                "rss_mb_max",
            )
        }
    for key, value in out.items():
        if key.startswith("overload_edgeinfer"):
            value["queue_timeout_ms"] = QUEUE_TIMEOUT_S * 1e3
    return out


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    main()
