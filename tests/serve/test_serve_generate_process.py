"""Served generation in a child process: the child's death, its restart, the server's
shutdown (no child outlives its server), and the same tokens as generation on a thread of
the server's own process (``BatchConfig.generation_process=False``).

Real servers on 127.0.0.1 over the tiny language model; the children are real processes,
killed for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import serve_helpers as h
from test_serve_generate import PROMPT, events, metric, stretch_context

from edgeinfer.bundle import Bundle
from edgeinfer.generate import GenerativeModel, create_bundle
from edgeinfer.serve import BatchConfig
from edgeinfer.serve.generation import GenerationBatcher

WORKER = "edgeinfer.serve.genworker"


@pytest.fixture(scope="module")
def repo(tiny_bundle: Bundle, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llm, and ``long``: the same weights able to generate 4000 tokens (a second or
    more: long enough to be killed in the middle)."""
    root = tmp_path_factory.mktemp("genproc-repo")
    shutil.copytree(tiny_bundle.path, root / "tiny-llm" / "1")
    long_dir = stretch_context(tiny_dir, tmp_path_factory.mktemp("genproc-long") / "m", 4096)
    create_bundle(
        long_dir,
        root / "long" / "1",
        name="long",
        golden_prompts=(PROMPT,),
        golden_max_tokens=4,
        quantization={"precision": "fp32"},
    )
    return root


def _batcher(server: Any, name: str) -> GenerationBatcher:
    batcher = server.dataplane.resolve(name).batcher
    assert isinstance(batcher, GenerationBatcher)
    return batcher


def _wait_for(check: Callable[[], bool], what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _workers(pid: int) -> list[psutil.Process]:
    """The generation processes started by the server ``pid``."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if any(WORKER in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# ---------------------------------------------------------------- the same tokens either way
@pytest.fixture(scope="module")
def servers(repo: Path) -> Iterator[dict[bool, Any]]:
    """The same repository served with the generations in a child process and on a thread."""
    with (
        h.running(h.config(repo, batching=BatchConfig(max_batch_size=4))) as child,
        h.running(
            h.config(repo, batching=BatchConfig(max_batch_size=4, generation_process=False))
        ) as thread,
    ):
        yield {True: child, False: thread}


@pytest.mark.parametrize("process", [True, False], ids=["child-process", "thread"])
@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 24, "temperature": 0},
        {"max_tokens": 24, "temperature": 0.9, "top_k": 20, "seed": 7},
        {"max_tokens": 40, "temperature": 0, "stop": ["lazy"]},
    ],
    ids=["greedy", "seeded", "stop"],
)
def test_both_modes_give_the_local_generation(
    servers: dict[bool, Any], tiny: GenerativeModel, process: bool, params: dict[str, Any]
) -> None:
    server = servers[process]
    assert bool(_batcher(server, "tiny-llm").processes) is process
    local = tiny.generate(PROMPT, **params)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post(
            "/v2/models/tiny-llm/generate", json={"text_input": PROMPT, "parameters": params}
        )
        assert r.status_code == 200, r.text
        assert r.json()["token_ids"] == list(local.token_ids)
        assert r.json()["text_output"] == local.text
        assert r.json()["finish_reason"] == local.stop_reason
        body = {"text_input": PROMPT, "parameters": params}
        with client.stream("POST", "/v2/models/tiny-llm/generate_stream", json=body) as s:
            got = list(events(s))
        assert [t for e in got for t in e["token_ids"]] == list(local.token_ids)
        assert "".join(e["text_output"] for e in got) == local.text
        # a bad parameter is the same one-line 400, checked in the server's process
        bad = {"text_input": PROMPT, "parameters": {"max_tokens": 0}}
        r = client.post("/v2/models/tiny-llm/generate", json=bad)
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]


def test_a_generation_process_that_dies_fails_its_streams_and_is_restarted(repo: Path) -> None:
    cfg = h.config(repo, batching=BatchConfig(max_batch_size=4))
    with h.running(cfg) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        (process,) = _batcher(server, "long").processes
        first_pid = process.pid
        assert psutil.Process(first_pid).is_running()
        errors = metric(client, "edgeinfer_generations_total", model="long", finish_reason="error")
        body = {"text_input": PROMPT, "parameters": {"max_tokens": 4000}}
        got: list[Any] = []
        with client.stream("POST", "/v2/models/long/generate_stream", json=body) as s:
            assert s.status_code == 200
            for event in events(s):
                got.append(event)
                if len(got) == 3:
                    os.kill(first_pid, signal.SIGKILL)  # mid-stream
        # the stream ends with one error event, not a hang or a cut connection
        assert "error" in got[-1] and "generation process stopped" in got[-1]["error"]
        assert "\n" not in got[-1]["error"]
        assert sum(len(e.get("token_ids", ())) for e in got) < 4000
        _wait_for(
            lambda: (
                metric(client, "edgeinfer_generations_total", model="long", finish_reason="error")
                > errors
            ),
            "the lost generation was counted as an error",
        )
        # a new child serves the next generations, the same tokens as before
        r = client.post(
            "/v2/models/long/generate", json={"text_input": PROMPT, "parameters": {"max_tokens": 8}}
        )
        assert r.status_code == 200, r.text
        assert process.pid != first_pid and psutil.Process(process.pid).is_running()
        assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"
        # the other model's child was not touched
        (other,) = _batcher(server, "tiny-llm").processes
        assert psutil.Process(other.pid).is_running()


def test_a_generation_not_begun_when_its_process_dies_runs_on_the_next(
    repo: Path, tiny: GenerativeModel
) -> None:
    params = {"max_tokens": 12, "temperature": 0}
    want = list(tiny.generate(PROMPT, **params).token_ids)
    cfg = h.config(repo, batching=BatchConfig(max_batch_size=4))
    with h.running(cfg) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        (process,) = _batcher(server, "tiny-llm").processes
        first_pid = process.pid
        os.kill(first_pid, signal.SIGSTOP)  # it takes the generation, and gives nothing
        out: dict[str, httpx.Response] = {}
        body = {"text_input": PROMPT, "parameters": params}

        def send() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as other:
                out["r"] = other.post("/v2/models/tiny-llm/generate", json=body)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            _wait_for(lambda: process.jobs == 1, "the generation went to the process")
        finally:
            os.kill(first_pid, signal.SIGKILL)
        sender.join(60)
        # the client never knew: the next process ran its generation from the start
        assert out["r"].status_code == 200, out["r"].text
        assert out["r"].json()["token_ids"] == want
        assert process.pid != first_pid
        errors = metric(
            client, "edgeinfer_generations_total", model="tiny-llm", finish_reason="error"
        )
        assert errors == 0


@pytest.mark.slow
def test_a_generation_process_that_keeps_dying_makes_the_model_unavailable(repo: Path) -> None:
    from edgeinfer.serve.genproc import MAX_RESTARTS

    cfg = h.config(repo, batching=BatchConfig(max_batch_size=4))
    with h.running(cfg) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        (process,) = _batcher(server, "tiny-llm").processes
        body = {"text_input": PROMPT, "parameters": {"max_tokens": 4}}
        for _ in range(MAX_RESTARTS):
            os.kill(process.pid, signal.SIGKILL)
            # the next generation waits for the restarted child, then runs
            pid = process.pid
            r = client.post("/v2/models/tiny-llm/generate", json=body)
            assert r.status_code == 200, r.text
            assert process.pid != pid
        os.kill(process.pid, signal.SIGKILL)
        _wait_for(lambda: process.unavailable is not None, "the model was given up")
        r = client.post("/v2/models/tiny-llm/generate", json=body)
        assert r.status_code == 503, r.text
        assert "unavailable" in r.json()["error"] and "\n" not in r.json()["error"]
        # the server's other models and its health are untouched
        assert client.get("/v2/health/live").status_code == 200
        assert client.post("/v2/models/long/generate", json=body).status_code == 200


# ---------------------------------------------------------------- no orphans
def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["terminated", "killed"])
def test_no_generation_process_outlives_its_server(
    tiny_bundle: Bundle, tmp_path: Path, how: signal.Signals
) -> None:
    shutil.copytree(tiny_bundle.path, tmp_path / "repo" / "tiny-llm" / "1")
    port = _free_port()
    cmd = [sys.executable, "-m", "edgeinfer", "serve", str(tmp_path / "repo"), "--port", str(port)]
    cmd += ["--grpc-port", "-1", "--poll", "0", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}/v2/models/tiny-llm/generate_stream"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        workers = _workers(proc.pid)
        assert len(workers) == 1
        # a stream in flight when the server goes
        opened = threading.Event()

        def read() -> None:
            body = {"text_input": PROMPT, "parameters": {"max_tokens": 200}}
            try:
                with httpx.stream("POST", url, json=body, timeout=60) as s:
                    opened.set()
                    for _ in s.iter_lines():
                        pass
            except httpx.HTTPError:
                pass  # the server went away
            finally:
                opened.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        opened.wait(60)
        proc.send_signal(how)
        proc.wait(60)
        reader.join(60)
        # gone, or a zombie waiting for whoever adopted it to reap it: no longer running
        _wait_for(
            lambda: not any(_running(w) for w in workers),
            "the generation processes ended with their server",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            if w.is_running():
                w.kill()
