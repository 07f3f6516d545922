"""Hostile clients against the edge server: does a well-behaved client still get answered?

One server process (``edgeinfer.serve.run_server`` on 127.0.0.1, the tiny MLP, one intra-op
thread) faces each attack in :data:`ATTACKS` in turn. For every attack, in the same run:

1. baseline: the well-behaved client alone for ``--baseline`` seconds;
2. attack: the same client for ``--seconds`` while the attack runs in its own process;
3. settle: the attack is stopped and its sockets closed; the server's RSS is read again.

The well-behaved client is benchmarks/server_loadgen.py's closed loop (two keep-alive
connections, JSON tensors). Reported per attack: the client's p50/p99 and answers without
and with the attack, the ratio of the p99s, the server's peak RSS (sampled every 50 ms) in
both phases and after the settle, and what the attack itself saw (statuses the server
answered, connections it closed). Targets: p99 under attack within 2x of the baseline, peak
RSS within +64 MB of the baseline's.

An attack is ``async def attack(target: Target, stop: asyncio.Event) -> dict[str, Any]``:
it runs on the event loop of a process of its own (so its Python work never holds the
client's GIL; the machine's cores are still shared) until ``stop`` is set, then closes what
it opened and returns what it saw (JSON-ready). The attackers here reopen each connection
the server ends a second later, so an attack lasts its whole window. Add one by
writing the function and registering it in ATTACKS; ``--only NAME`` (repeatable) runs a
subset.

Run: .venv/bin/python benchmarks/bench_hostile.py [--only NAME ...] [--seconds S]
Writes benchmarks/results/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write  # noqa: E402
from server_loadgen import http_request, run_http  # noqa: E402

REOPEN_S = 1.0  # seconds an attacker waits before reopening a connection the server ended
P99_TARGET = 2.0  # p99 under attack / baseline p99
RSS_TARGET_MB = 64.0  # peak RSS under attack minus the baseline's peak

# Settings the server runs with (ServeConfig fields); a field this server does not have is
# left out and listed in the results, so the same script measures an older server too.
# Timeouts are shorter than the defaults (60 s) so that a run shows the server closing the
# attackers' connections within the attack's window.
SERVER_SETTINGS: dict[str, Any] = {
    "header_timeout_s": 5.0,
    "body_timeout_s": 5.0,
}


@dataclass
class Target:
    """Where an attack aims, and what the server was told."""

    host: str
    port: int
    settings: dict[str, Any]
    infer_path: str = "/v2/models/mlp/infer"
    body: bytes = b""  # a valid inference request body (JSON)


Attack = Callable[[Target, asyncio.Event], Awaitable[dict[str, Any]]]


# ---------------------------------------------------------------- helpers
@dataclass
class Tally:
    """What an attack saw: the server's answers and how its connections ended."""

    statuses: dict[str, int] = field(default_factory=dict)
    closed_by_server: int = 0  # connections the server ended while the attack held them
    refused: int = 0  # connections that could not be opened at all
    opened: int = 0  # connections opened in all (each attacker reopens what was closed)
    bytes_sent: int = 0

    def answer(self, head: bytes) -> None:
        key = head[9:12].decode("ascii", "replace") if head.startswith(b"HTTP/") else "eof"
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def result(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def _open(target: Target, tally: Tally) -> tuple[asyncio.StreamReader, Any] | None:
    try:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    except OSError:
        tally.refused += 1
        return None
    tally.opened += 1
    return reader, writer


async def _hold(
    target: Target,
    stop: asyncio.Event,
    tally: Tally,
    first: bytes,
    drip: bytes,
    every_s: float,
    limit: int | None = None,
) -> None:
    """One connection: send ``first``, then ``drip`` every ``every_s`` (at most ``limit``
    times) until ``stop``; when the server answers or closes, open the next one a second
    later (as an attacker would), so the attack keeps its number of connections for its
    whole window without turning into a flood of new ones."""
    while not stop.is_set():
        await _hold_once(target, stop, tally, first, drip, every_s, limit)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REOPEN_S)


async def _hold_once(
    target: Target,
    stop: asyncio.Event,
    tally: Tally,
    first: bytes,
    drip: bytes,
    every_s: float,
    limit: int | None,
) -> None:
    conn = await _open(target, tally)
    if conn is None:
        await asyncio.sleep(0.1)  # refused: try again in a moment
        return
    reader, writer = conn
    answer = asyncio.ensure_future(reader.read(65536))
    try:
        if first:
            writer.write(first)
            tally.bytes_sent += len(first)
        sent = 0
        while not stop.is_set() and not answer.done():
            dripping = bool(drip) and (limit is None or sent < limit)
            waiter = asyncio.ensure_future(stop.wait())
            if dripping:
                writer.write(drip)
                sent += 1
                tally.bytes_sent += len(drip)
                # the server may stop reading: wait for room, the answer or the stop
                drain = asyncio.ensure_future(writer.drain())
                await asyncio.wait({drain, answer, waiter}, return_when="FIRST_COMPLETED")
                drain.cancel()
            if not answer.done() and not stop.is_set():
                timeout = every_s if dripping else 1.0
                await asyncio.wait({answer, waiter}, timeout=timeout, return_when="FIRST_COMPLETED")
            waiter.cancel()
        if answer.done() and not stop.is_set():
            tally.closed_by_server += 1
            head = b"" if answer.exception() else answer.result()
            tally.answer(head)
    finally:
        answer.cancel()
        writer.close()


def _head(target: Target, extra: str = "", length: int | None = None) -> bytes:
    lines = [f"POST {target.infer_path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


# ---------------------------------------------------------------- attacks
async def big_header(target: Target, stop: asyncio.Event) -> dict[str, Any]:
    """10 connections, each sending one header of up to 64 MiB that never ends."""
    tally = Tally()
    chunk = b"a" * 65536
    first = _head(target, "X-Filler: ")
    await asyncio.gather(
        *(_hold(target, stop, tally, first, chunk, 0.0, limit=1024) for _ in range(10))
    )
    return tally.result()


async def idle(target: Target, stop: asyncio.Event) -> dict[str, Any]:
    """500 connections that never send a byte."""
    tally = Tally()
    await asyncio.gather(*(_hold(target, stop, tally, b"", b"", 1.0) for _ in range(500)))
    return tally.result()


async def slowloris(target: Target, stop: asyncio.Event) -> dict[str, Any]:
    """500 connections sending a request's headers one small header a second, never ending."""
    tally = Tally()
    await asyncio.gather(
        *(_hold(target, stop, tally, _head(target), b"X-a: b\r\n", 1.0) for _ in range(500))
    )
    return tally.result()


async def slow_body(target: Target, stop: asyncio.Event) -> dict[str, Any]:
    """200 connections sending whole headers, then a 32 KiB body at one byte a second."""
    tally = Tally()
    first = _head(target, "\r\n", length=32768)
    await asyncio.gather(*(_hold(target, stop, tally, first, b"[", 1.0) for _ in range(200)))
    return tally.result()


async def short_body(target: Target, stop: asyncio.Event) -> dict[str, Any]:
    """100 connections whose body stops short of its Content-Length and then waits."""
    tally = Tally()
    first = _head(target, "\r\n", length=len(target.body)) + target.body[: len(target.body) // 2]
    await asyncio.gather(*(_hold(target, stop, tally, first, b"", 1.0) for _ in range(100)))
    return tally.result()


ATTACKS: dict[str, Attack] = {
    "big_header": big_header,
    "idle": idle,
    "slowloris": slowloris,
    "slow_body": slow_body,
    "short_body": short_body,
}
# Request bodies that cost the server memory or its event loop (benchmarks/hostile_bodies.py).
from hostile_bodies import BODY_ATTACKS, BODY_SETTINGS  # noqa: E402

ATTACKS.update(BODY_ATTACKS)
SERVER_SETTINGS.update(BODY_SETTINGS)


# ---------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_repository(root: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = root / "mlp" / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return root


SERVER = """
import json, sys
from pathlib import Path
from edgeinfer.serve import ServeConfig, run_server
kw = json.loads(sys.argv[1])
run_server(ServeConfig(Path(kw.pop("repository")), **kw), log_level="warning")
"""


def supported_settings() -> tuple[dict[str, Any], list[str]]:
    from edgeinfer.serve import ServeConfig

    names = {f.name for f in dataclasses.fields(ServeConfig)}
    have = {k: v for k, v in SERVER_SETTINGS.items() if k in names}
    return have, sorted(set(SERVER_SETTINGS) - names)


class Server:
    def __init__(self, repo: Path, settings: dict[str, Any], log: Path) -> None:
        self.port = free_port()
        kw = {
            "repository": str(repo),
            "port": self.port,
            "grpc_port": None,
            "poll_interval_s": None,
            "threads": 1,
            **settings,
        }
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(kw)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{self.port}/v2/models/mlp/ready"
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        import psutil

        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PeakRss:
    """The server's peak RSS while the ``with`` block runs (sampled every 50 ms), and the
    cores its CPU time filled (CPU seconds per second)."""

    def __init__(self, server: Server) -> None:
        self.server, self.peak_mb = server, 0.0
        self.cores = 0.0
        self._cpu0 = self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self.server.rss_mb())
            except Exception:  # the process is gone: nothing more to sample
                return
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._cpu0, self._t0 = self.server.cpu_s(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cores = (self.server.cpu_s() - self._cpu0) / (time.perf_counter() - self._t0)


# ---------------------------------------------------------------- the run
def _relay(stop: Any, loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    stop.wait()
    with contextlib.suppress(RuntimeError):  # the attack ended on its own, its loop closed
        loop.call_soon_threadsafe(done.set)


def _attack_process(name: str, target: Target, stop: Any, results: Any) -> None:
    """The body of an attack's own process: run ATTACKS[name] until ``stop`` is set."""

    async def main() -> dict[str, Any]:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=_relay, args=(stop, loop, done), daemon=True).start()
        return await ATTACKS[name](target, done)

    started, cpu0 = time.perf_counter(), time.process_time()
    try:
        result = asyncio.run(main())
    except Exception as exc:
        result = {"error": repr(exc)}
    # the attacker shares this machine's cores with the server and the client
    result["attacker_cores"] = round(
        (time.process_time() - cpu0) / (time.perf_counter() - started), 2
    )
    results.put(result)


class AttackProcess:
    """Runs one attack in a process of its own until ``stop()``, so that the attacker's
    Python work never holds the well-behaved client's GIL (the cores are still shared)."""

    def __init__(self, name: str, target: Target) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._proc = ctx.Process(
            target=_attack_process, args=(name, target, self._stop, self._results), daemon=True
        )
        self.result: dict[str, Any] = {}

    def start(self) -> None:
        self._proc.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        try:
            self.result = self._results.get(timeout=timeout_s)
        except queue.Empty:
            self.result = {"error": f"the attack did not stop within {timeout_s:.0f} s"}
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


def client(target: Target, seconds: float) -> dict[str, Any]:
    request = http_request(
        target.host,
        target.port,
        target.infer_path,
        target.body,
        {"Content-Type": "application/json"},
    )
    result = asyncio.run(run_http(target.host, target.port, request, 2, seconds))
    return result.summary()


def measure(
    name: str, attack: Attack, server: Server, target: Target, args: argparse.Namespace
) -> dict[str, Any]:
    with PeakRss(server) as base_rss:
        baseline = client(target, args.baseline)
    runner = AttackProcess(name, target)
    with PeakRss(server) as attack_rss:
        runner.start()
        time.sleep(args.ramp)  # let the attack open its connections
        under = client(target, args.seconds)
        runner.stop()
    time.sleep(args.settle)
    after_mb = server.rss_mb()
    out: dict[str, Any] = {
        "doc": (attack.__doc__ or "").strip(),
        "baseline": baseline,
        "under_attack": under,
        "attack": runner.result,
        "rss_mb": {
            "baseline_peak": round(base_rss.peak_mb, 1),
            "attack_peak": round(attack_rss.peak_mb, 1),
            "after_settle": round(after_mb, 1),
        },
        "server_cores": {
            "baseline": round(base_rss.cores, 2),
            "under_attack": round(attack_rss.cores, 2),
        },
    }
    if "p99_ms" in baseline and "p99_ms" in under:
        ratio = under["p99_ms"] / baseline["p99_ms"]
        out["p99_ratio"] = round(ratio, 2)
        out["p99_met"] = ratio <= P99_TARGET
    else:
        out["p99_met"] = False  # the client got no successful answer in one of the phases
    growth = attack_rss.peak_mb - base_rss.peak_mb
    out["rss_growth_mb"] = round(growth, 1)
    out["rss_met"] = growth <= RSS_TARGET_MB
    print(
        f"{name:>12}: p99 {baseline.get('p99_ms', '-')} -> {under.get('p99_ms', '-')} ms, "
        f"ok {baseline['ok']} -> {under['ok']}, RSS peak {base_rss.peak_mb:.0f} -> "
        f"{attack_rss.peak_mb:.0f} MB (after {after_mb:.0f}), server cores "
        f"{base_rss.cores:.2f} -> {attack_rss.cores:.2f}; attack saw {runner.result}",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(ATTACKS), default=[])
    parser.add_argument("--seconds", type=float, default=10.0, help="client time per attack")
    parser.add_argument("--baseline", type=float, default=4.0, help="client time alone")
    parser.add_argument("--ramp", type=float, default=1.0, help="attack head start, s")
    parser.add_argument("--settle", type=float, default=1.0, help="wait after an attack, s")
    args = parser.parse_args()
    names = args.only or list(ATTACKS)
    settings, unsupported = supported_settings()
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()
    results: dict[str, Any] = {}
    load_before = os.getloadavg()  # the cores are shared: other work's load, for the record
    with tempfile.TemporaryDirectory() as tmp:
        repo = tiny_repository(Path(tmp) / "repo")
        server = Server(repo, settings, Path(tmp) / "server.log")
        try:
            target = Target("127.0.0.1", server.port, settings, body=body)
            for name in names:
                results[name] = measure(name, ATTACKS[name], server, target, args)
        finally:
            server.stop()
            log = (Path(tmp) / "server.log").read_text(errors="replace")
    path = write(
        "hostile",
        {
            "server_settings": settings,
            "settings_not_supported": unsupported,
            "targets": {"p99_ratio_max": P99_TARGET, "rss_growth_mb_max": RSS_TARGET_MB},
            "load_average": {"before": load_before, "after": os.getloadavg()},  # 1, 5, 15 min
            "attacks": results,
            "server_log_tail": log.splitlines()[-20:],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
