"""Served generation: tokens per second and the wait between tokens at 1, 4 and 8 streams,
and what the other clients of the server wait meanwhile, with the generations in a child
process (the default) and on a thread of the server's process, paired in one run.

``edgeinfer serve`` (a process of its own, ``--threads 1``, the default 8 generations at
once) serves each language model twice: ``M`` (generations in a child process) and
``M-thread`` (the same bundle, ``"generation_process": false`` in its ``config.json``),
and a small predictive model; the two modes take turns round by round, their order
alternating. Clients in this process stream greedy generations from
``POST /v2/models/M/generate_stream`` (server-sent events), ``--streams`` at a time, each
client starting its next stream as soon as one ends, for ``--rounds`` rounds of
``--per-client`` streams per client. Reported per concurrency:

- ``tokens_per_s``: all tokens received over the round's wall time (median over rounds);
- ``stream_tokens_per_s``: one stream's rate after its first token (median over streams);
- ``inter_token_ms`` p50 and p99: the gaps between a stream's events after the first (one
  event per token, but for a piece held back for a stop string or an incomplete character);
- ``ttft_ms`` p50 and p99: request sent to first event (queueing for a slot included);
  ``server_ttft_ms_p50``: the same inside the server (``Server-Timing``: queue + ttft);
- ``health_ms`` p50 and p99: another client's health check, every 50 ms meanwhile (what
  the event loop's waits for the tokens being computed cost everyone else);
- ``infer_ms`` p50 and p99: the same client's inference on the predictive model (a
  4x256x256x4 MLP, one row), right after each health check;
- ``local_tokens_per_s``: the same model in this process (``GenerativeModel.stream``, one
  stream, same threads), the served rate's ceiling at one stream.

Models: the tests' tiny Llama (trained in seconds, cached under the temporary directory)
and, unless ``--no-smollm``, SmolLM2-135M-Instruct INT4 (``edgeinfer.zoo.smollm.build``:
the first build takes a minute or two, then it is cached). The machine is shared: the load
average is recorded with the figures.

Run: .venv/bin/python benchmarks/bench_generate_serve.py [--rounds 3] [--no-smollm]
Writes benchmarks/results/generate_serve.json (``models.M.by_mode.process|thread``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

HERE = Path(__file__).resolve().parent

PROMPTS = (
    "the quick brown",
    "edge devices run",
    "a small model runs",
    "the lazy dog",
)
SMOLLM_PROMPTS = (
    "The capital of France is",
    "Write a short note about the weather today.",
    "Small language models on phones are useful because",
    "Here is a list of three fruits:",
)


def tiny_dir() -> Path:
    """The tests' tiny model (the demo's recipe), built once and cached as the tests do."""
    from edgeinfer.demo._tiny_lm import model_dir

    return model_dir(Path(tempfile.gettempdir()) / "edgeinfer-tests")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(repo: Path, models: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgeinfer", "serve", str(repo), "--port", str(port)]
    cmd += ["--grpc-port", "-1", "--threads", "1", "--poll", "0"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    urls = [f"http://127.0.0.1:{port}/v2/models/{m}/ready" for m in models]
    while True:
        try:
            if all(urllib.request.urlopen(u, timeout=2).status == 200 for u in urls):
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start; see {log}")
        time.sleep(0.3)


async def one_stream(client: Any, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"text_input": prompt, "parameters": {"max_tokens": max_tokens, "temperature": 0}}
    sent = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    url = f"/v2/models/{model}/generate_stream"
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread())[:200]!r}")
        timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                stamps.append(time.perf_counter())
                tokens += len(event["token_ids"])
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    rate = (tokens - 1) / (stamps[-1] - stamps[0]) if tokens > 1 and len(stamps) > 1 else 0.0
    return {
        "ttft": stamps[0] - sent,
        "server_ttft": (float(timing["queue"]) + float(timing["ttft"])) / 1e3,
        "gaps": gaps,
        "tokens": tokens,
        "rate": rate,
    }


async def one_round(
    port: int, model: str, prompts: tuple[str, ...], streams: int, per_client: int, tokens: int
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
    ) as client:

        async def worker(k: int) -> list[dict[str, Any]]:
            return [
                await one_stream(client, model, prompts[(k + i) % len(prompts)], tokens)
                for i in range(per_client)
            ]

        probes: list[float] = []
        infers: list[float] = []
        running = True

        async def probe() -> None:
            """What another client meets meanwhile: a health check every 50 ms, and an
            inference on the predictive model after each."""
            async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as other:
                await other.get("/v2/health/live")
                await other.post(PROBE_URL, json=PROBE_BODY)
                while running:
                    sent = time.perf_counter()
                    await other.get("/v2/health/live")
                    probes.append(time.perf_counter() - sent)
                    sent = time.perf_counter()
                    r = await other.post(PROBE_URL, json=PROBE_BODY)
                    infers.append(time.perf_counter() - sent)
                    if r.status_code != 200:
                        raise RuntimeError(f"probe inference: {r.status_code} {r.text[:200]}")
                    await asyncio.sleep(0.05)

        # the connections open before the clock starts
        await asyncio.gather(*(client.get("/v2/health/live") for _ in range(streams)))
        prober = asyncio.ensure_future(probe())
        start = time.perf_counter()
        results = await asyncio.gather(*(worker(k) for k in range(streams)))
        wall = time.perf_counter() - start
        running = False
        await prober
    flat = [s for per in results for s in per]
    return {"wall": wall, "streams": flat, "probes": probes, "infers": infers}


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def local_rate(model_path: Path, prompts: tuple[str, ...], tokens: int, rounds: int) -> float:
    from edgeinfer.generate import load

    with load(model_path, threads=1) as model:
        model.generate(prompts[0], max_tokens=4)
        rates = [
            model.generate(p, max_tokens=tokens).tokens_per_s
            for _ in range(rounds)
            for p in prompts
        ]
    return statistics.median(rates)


def row_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    every = [s for r in rounds for s in r["streams"]]
    gaps = [g for s in every for g in s["gaps"]]
    probes = [p for r in rounds for p in r["probes"]]
    infers = [p for r in rounds for p in r["infers"]]
    ttft = [s["ttft"] for s in every]
    rates = [sum(s["tokens"] for s in r["streams"]) / r["wall"] for r in rounds]
    return {
        "tokens_per_s": round(statistics.median(rates), 1),
        "tokens_per_s_rounds": [round(x, 1) for x in rates],
        "stream_tokens_per_s": round(statistics.median(s["rate"] for s in every), 1),
        "inter_token_ms_p50": round(pct(gaps, 0.50) * 1e3, 3),
        "inter_token_ms_p99": round(pct(gaps, 0.99) * 1e3, 3),
        "ttft_ms_p50": round(pct(ttft, 0.50) * 1e3, 2),
        "ttft_ms_p99": round(pct(ttft, 0.99) * 1e3, 2),
        "server_ttft_ms_p50": round(pct([s["server_ttft"] for s in every], 0.5) * 1e3, 2),
        "health_ms_p50": round(pct(probes, 0.50) * 1e3, 2),
        "health_ms_p99": round(pct(probes, 0.99) * 1e3, 2),
        "infer_ms_p50": round(pct(infers, 0.50) * 1e3, 2),
        "infer_ms_p99": round(pct(infers, 0.99) * 1e3, 2),
        "probes": len(probes),
        "streams_measured": len(every),
        "load_average": os.getloadavg()[0],
    }


MODES = {"process": "", "thread": "-thread"}  # mode -> suffix of the model's name


def bench_model(
    port: int, name: str, bundle: Path, prompts: tuple[str, ...], args: argparse.Namespace
) -> dict[str, Any]:
    tokens = args.tokens if name == "tiny" else args.smollm_tokens
    out: dict[str, Any] = {"max_tokens": tokens, "local_tokens_per_s": 0.0, "by_mode": {}}
    for suffix in MODES.values():  # warm the connection and model
        asyncio.run(one_round(port, name + suffix, prompts, 1, 1, 8))
    out["local_tokens_per_s"] = round(local_rate(bundle, prompts, tokens, args.rounds), 1)
    by_mode: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    for streams in args.streams:
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for k in range(args.rounds):
            order = list(MODES) if k % 2 == 0 else list(reversed(MODES))
            for mode in order:
                rounds[mode].append(
                    asyncio.run(
                        one_round(
                            port, name + MODES[mode], prompts, streams, args.per_client, tokens
                        )
                    )
                )
        for mode in MODES:
            row = row_of(rounds[mode])
            by_mode[mode][str(streams)] = row
            print(name, mode, streams, json.dumps(row), flush=True)
    out["by_mode"] = {mode: {"by_streams": rows} for mode, rows in by_mode.items()}
    return out


def probe_model(path: Path) -> None:
    """The predictive model the probe runs: x [N, 4] through three 256-wide MatMuls."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"w0": (4, 256), "w1": (256, 256), "w2": (256, 4)}
    weights = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 16, n)
        for n, s in shapes.items()
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h0"]),
            helper.make_node("Relu", ["h0"], ["r0"]),
            helper.make_node("MatMul", ["r0", "w1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["r1"]),
            helper.make_node("MatMul", ["r1", "w2"], ["y"]),
        ],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


PROBE_URL = "/v2/models/probe/infer"
PROBE_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def thread_twin(repo: Path, name: str, bundle: Path) -> None:
    """``name-thread``: the same bundle served with its generations on a thread."""
    twin = repo / (name + MODES["thread"])
    shutil.copytree(bundle, twin / "1")
    (twin / "config.json").write_text(json.dumps({"generation_process": False}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-client", type=int, default=2, help="streams per client per round")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, default=100, help="tokens per stream, tiny model")
    ap.add_argument("--smollm-tokens", type=int, default=64, help="tokens per stream, SmolLM2")
    ap.add_argument("--no-smollm", action="store_true", help="the tiny model only")
    args = ap.parse_args()

    from edgeinfer.generate import create_bundle

    work = Path(tempfile.mkdtemp(prefix="bench-generate-serve."))
    try:
        repo = work / "repo"
        models: dict[str, tuple[Path, tuple[str, ...]]] = {}
        tiny = create_bundle(
            tiny_dir(),
            repo / "tiny" / "1",
            name="tiny",
            golden_prompts=PROMPTS[:1],
            golden_max_tokens=4,
            quantization={"precision": "fp32"},
        )
        models["tiny"] = (tiny.path, PROMPTS)
        if not args.no_smollm:
            from edgeinfer.zoo import smollm

            built = smollm.build(repo / "smollm2-int4" / "1", "int4")
            models["smollm2-int4"] = (built.path, SMOLLM_PROMPTS)
        for name, (path, _) in models.items():
            thread_twin(repo, name, path)
        probe_model(repo / "probe" / "1" / "model.onnx")
        names = [n + suffix for n in models for suffix in MODES.values()] + ["probe"]
        proc, port = start_server(repo, names, work / "server.log")
        try:
            results = {
                name: bench_model(port, name, path, prompts, args)
                for name, (path, prompts) in models.items()
            }
        finally:
            proc.terminate()
            proc.wait(30)
        payload = {
            "server": "edgeinfer serve --threads 1 (8 generations at once), REST SSE, greedy",
            "modes": {
                "process": "generations in a child process per model (the default)",
                "thread": "generations on a stepper thread in the server's process",
            },
            "rounds": args.rounds,
            "streams_per_client_per_round": args.per_client,
            "models": results,
        }
        print("wrote", write("generate_serve", payload))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
