"""The offloading client against servers that misbehave on purpose, on loopback.

Each hostile server is a small socket server in a thread that answers the metadata and
ready endpoints like an honest ``mlp`` server (x: float32 [N,4] -> logits: float32 [N,3])
and does exactly one bad thing on ``/infer``. The client must bound what that costs it
(time, memory), never return a bad answer as a result, and fall back to the local model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zstandard
from offload_helpers import Served

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.offload import (
    Offloader,
    RemoteModel,
    RemoteProtocolError,
    RemoteTimeout,
)
from edgeinfer.offload._inflate import inflate
from edgeinfer.runtime import Model

METADATA = {
    "name": "mlp",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
}

Behaviour = Callable[["_Handler"], None]


class _Handler(socketserver.StreamRequestHandler):
    """Honest metadata and ready answers; ``/infer`` is the server's ``behaviour``."""

    server: _Server

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while not self.server.stopping.is_set():
                line = self.rfile.readline()
                if not line:
                    return
                length = 0
                while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.rfile.read(length)
                path = line.split()[1].decode()
                if path.endswith("/infer"):
                    self.server.infers += 1
                    self.server.behaviour(self)
                elif self.server.get is not None:
                    self.server.get(self)
                elif path.endswith("/ready"):
                    self.answer(b'{"ready": true}')
                else:
                    self.answer(json.dumps(METADATA).encode())

    def answer(self, body: bytes, *headers: str) -> None:
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *headers,
        ]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: Behaviour, get: Behaviour | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.get = get  # None: honest metadata and ready answers
        self.stopping = threading.Event()
        self.infers = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def hostile(behaviour: Behaviour, get: Behaviour | None = None) -> Iterator[_Server]:
    server = _Server(behaviour, get)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _trickle_headers(h: _Handler) -> None:
    """An answer whose headers never end: one byte every 50 ms (for at most 30 s)."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    h.wfile.flush()
    end = time.monotonic() + 30.0
    while not h.server.stopping.is_set() and time.monotonic() < end:
        h.wfile.write(b"X")
        h.wfile.flush()
        time.sleep(0.05)


def _json_answer(doc: object) -> Behaviour:
    return lambda h: h.answer(json.dumps(doc).encode())


def _zstd_bomb(size: int) -> bytes:
    """``size`` zero bytes as one zstd frame that does not declare its size."""
    c = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    zeros = bytes(1 << 20)
    return b"".join([c.compress(zeros) for _ in range(size >> 20)]) + c.flush()


# ------------------------------------------------------------ the deadline bounds the call
@pytest.mark.timeout(60)
def test_headers_trickling_in_do_not_outlive_the_deadline(local: Model, x: np.ndarray) -> None:
    with hostile(_trickle_headers) as server:
        with RemoteModel(server.url, "mlp") as remote:
            t0 = time.perf_counter()
            with pytest.raises(RemoteTimeout, match="no answer in time"):
                remote.infer(x, timeout=0.3)
            assert time.perf_counter() - t0 < 3.0  # unbounded, the call took 10 s and more
        with Offloader(local, [RemoteModel(server.url, "mlp")], "remote") as off:
            t0 = time.perf_counter()
            p = off.predict(x, deadline=0.3)
            assert time.perf_counter() - t0 < 3.0
        assert p.placement == "local" and p.fallback
        assert "no answer in time" in p.reason
        np.testing.assert_allclose(p.outputs["logits"], local.predict(x)["logits"])
        assert server.infers == 2


# ------------------------------------------------------------ compressed answers are bounded
@pytest.mark.timeout(60)
def test_a_zstd_bomb_costs_at_most_the_outputs_size(local: Model, x: np.ndarray) -> None:
    bomb = _zstd_bomb(512 << 20)  # 16 kB on the wire, 512 MiB decoded

    def answer(h: _Handler) -> None:
        h.answer(bomb, "Content-Encoding: zstd")

    with hostile(answer) as server, RemoteModel(server.url, "mlp") as remote:
        remote.metadata()
        tracemalloc.start()
        try:
            with pytest.raises(RemoteProtocolError, match="more than the limit of"):
                remote.infer(x, timeout=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20  # bytes; decoding it whole held 512 MiB and more
        with Offloader(local, [remote], "remote") as off:
            p = off.predict(x)
        assert p.placement == "local" and p.fallback
        np.testing.assert_allclose(p.outputs["logits"], local.predict(x)["logits"])


@pytest.mark.timeout(60)
def test_metadata_and_ready_answers_are_bounded_too(x: np.ndarray) -> None:
    """httpx decodes a compressed body whole; the small GET answers are decoded here."""
    bomb = _zstd_bomb(256 << 20)

    def answer(h: _Handler) -> None:
        h.answer(bomb, "Content-Encoding: zstd")

    with hostile(_json_answer({}), get=answer) as server, RemoteModel(server.url, "m") as remote:
        tracemalloc.start()
        try:
            with pytest.raises(RemoteProtocolError, match="more than the limit of 1048576"):
                remote.ready(timeout=30)
            with pytest.raises(RemoteProtocolError, match="more than the limit of 1048576"):
                remote.metadata(timeout=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 64 << 20  # bytes; httpx's own decoding held all 256 MiB
    slow = hostile(_json_answer({}), get=_trickle_headers)
    with slow as server, RemoteModel(server.url, "m") as remote:
        t0 = time.perf_counter()
        with pytest.raises(RemoteTimeout, match="no answer in time"):
            remote.ready(timeout=0.3)
        assert time.perf_counter() - t0 < 3.0


def test_decoding_stops_at_the_deadline() -> None:
    """Where the outputs cannot bound an answer (strings), the deadline still does."""
    bomb = _zstd_bomb(1 << 30)
    with pytest.raises(TimeoutError, match="still decompressing"):
        inflate(bomb, "zstd", limit=1 << 31, deadline=time.perf_counter() + 0.02)


@pytest.mark.parametrize(
    ("coding", "body", "match"),
    [
        ("gzip", b"plain text, not gzip", "not valid gzip"),
        ("zstd", zstandard.ZstdCompressor().compress(b"x" * 100_000)[:-20], "truncated"),
        ("br", b"...", "'br' is not supported"),
    ],
)
def test_bad_compressed_bodies_are_named(coding: str, body: bytes, match: str) -> None:
    from edgeinfer.protocol.errors import ProtocolError

    with pytest.raises(ProtocolError, match=match):
        inflate(body, coding, limit=1 << 20, deadline=time.perf_counter() + 60)


def test_honest_compressed_bodies_decode_in_steps() -> None:
    from edgeinfer.protocol import coding

    body = np.arange(3 << 20, dtype=np.float32).tobytes()  # 12 MiB: several steps
    for name in coding.available():
        sent = coding.encode(body, name)
        assert inflate(sent, name, limit=len(body), deadline=time.perf_counter() + 60) == body
    twice = coding.encode(body[:1000], "zstd") * 2  # two frames, one body
    assert inflate(twice, "zstd", limit=4000, deadline=time.perf_counter() + 60) == body[:1000] * 2


# ------------------------------------------------------------ answers are checked
def _output(name: str, datatype: str, shape: list[int]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape,
            "data": [0.5] * int(np.prod(shape))}  # fmt: skip


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ([_output("logits", "FP32", [1, 1])], r"output 'logits': expected float32 \[\?,3\]"),
        ([_output("scores", "FP32", [2, 3])], "lacks output.*'logits'"),
        ([], "lacks output.*'logits'"),
        ([_output("logits", "FP64", [2, 3])], "expected float32.*has float64"),
        ([_output("logits", "FP32", [2, 3, 1])], r"has float32 \[2,3,1\]"),
        (
            [_output("logits", "FP32", [2, 3]), _output("extra", "FP32", [1])],
            "'extra' that were not asked for",
        ),
    ],
)
def test_answers_that_do_not_fit_the_outputs_are_failures(
    local: Model, x: np.ndarray, outputs: list[dict[str, object]], match: str
) -> None:
    with hostile(_json_answer({"model_name": "mlp", "outputs": outputs})) as server:
        with (
            RemoteModel(server.url, "mlp") as remote,
            pytest.raises(RemoteProtocolError, match=match),
        ):
            remote.infer(x)
        with Offloader(local, [RemoteModel(server.url, "mlp")], "remote") as off:
            answers = [off.predict(x) for _ in range(3)]
            assert not off.breaker(0).closed  # three bad answers in a row: ejected
    for p in answers:
        assert p.placement == "local" and p.fallback
        np.testing.assert_allclose(p.outputs["logits"], local.predict(x)["logits"])
    assert "remote failed" in answers[0].reason


@contextlib.contextmanager
def hostile_grpc(outputs: dict[str, np.ndarray]) -> Iterator[str]:
    """A gRPC server with honest metadata whose every inference answer is ``outputs``."""
    from concurrent import futures

    import grpc  # type: ignore[import-untyped]

    from edgeinfer.protocol import grpc_codec
    from edgeinfer.protocol.pb import open_inference_grpc_pb2_grpc as pb_grpc
    from edgeinfer.protocol.types import InferenceResponse, InferTensor, ModelMetadata

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        def ModelReady(self, request: Any, context: Any) -> Any:
            return grpc_codec.pb.ModelReadyResponse(ready=True)

        def ModelMetadata(self, request: Any, context: Any) -> Any:
            return grpc_codec.model_metadata_to_proto(ModelMetadata.from_json(METADATA))

        def ModelInfer(self, request: Any, context: Any) -> Any:
            tensors = [InferTensor.from_array(n, a) for n, a in outputs.items()]
            return grpc_codec.response_to_proto(InferenceResponse("mlp", tensors))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.stop(None).wait(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ({"logits": np.zeros((1, 1), np.float32)}, r"expected float32 \[\?,3\]"),
        ({"scores": np.zeros((2, 3), np.float32)}, "lacks output.*'logits'"),
        ({"logits": np.zeros((2, 3), np.int64)}, "has int64"),
    ],
)
def test_grpc_answers_that_do_not_fit_are_failures_too(
    local: Model, x: np.ndarray, outputs: dict[str, np.ndarray], match: str
) -> None:
    with hostile_grpc(outputs) as url:
        with RemoteModel(url, "mlp") as remote, pytest.raises(RemoteProtocolError, match=match):
            remote.infer(x)
        with Offloader(local, [RemoteModel(url, "mlp")], "remote") as off:
            p = off.predict(x)
    assert p.placement == "local" and p.fallback
    np.testing.assert_allclose(p.outputs["logits"], local.predict(x)["logits"])


def test_an_answer_that_fits_is_a_result(x: np.ndarray) -> None:
    logits = _output("logits", "FP32", [2, 3])
    answer = _json_answer({"model_name": "mlp", "outputs": [logits]})
    with hostile(answer) as server, RemoteModel(server.url, "mlp") as remote:
        out = remote.predict(x)
    assert out["logits"].shape == (2, 3) and out["logits"].dtype == np.float32


def test_an_answer_longer_than_the_outputs_can_be_is_cut_off(x: np.ndarray) -> None:
    logits = _output("logits", "FP32", [2, 3])
    padding = " " * (1 << 20)  # valid JSON, but 1 MiB for six numbers
    body = json.dumps({"model_name": "mlp", "outputs": [logits]})[:-1] + padding + "}"
    with (
        hostile(lambda h: h.answer(body.encode())) as server,
        RemoteModel(server.url, "mlp") as remote,
        pytest.raises(RemoteProtocolError, match="longer than the model's outputs"),
    ):
        remote.infer(x)


# ------------------------------------------------------------ grpc:// is a gRPC address
def test_a_grpc_url_picks_the_grpc_transport(
    served: Served, repo: Path, local: Model, x: np.ndarray, tmp_path: Path
) -> None:
    assert served.grpc_url.startswith("grpc://")
    with RemoteModel(served.grpc_url, "mlp") as remote:
        assert remote.transport_name == "grpc"
        np.testing.assert_allclose(
            remote.predict(x)["logits"], local.predict(x)["logits"], rtol=1e-6
        )
    shutil.copy(repo / "mlp" / "1" / "model.onnx", tmp_path / "mlp.onnx")
    with (
        edgeinfer.load(tmp_path / "mlp.onnx") as named,
        Offloader(named, [served.grpc_url], "remote") as off,
    ):  # a URL alone: the model name is the local model's
        p = off.predict(x)
    assert p.placement == "remote" and p.remote == served.grpc_url
    with pytest.raises(InputError, match="is a gRPC address but transport='http'"):
        RemoteModel(served.grpc_url, "mlp", transport="http")
    with pytest.raises(InputError, match="unknown scheme 'ftp'"):
        RemoteModel("ftp://edge:21", "mlp")


# ------------------------------------------------------------ recovery after kill -9
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(repo: Path, port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    """``edgeinfer serve`` in its own process; returns once the model is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer", "serve", str(repo), "--port", str(port),
         "--grpc-port", str(grpc_port), "--poll", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    end = time.monotonic() + 60.0
    while time.monotonic() < end:
        assert proc.poll() is None, "the server process exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/mlp/ready", timeout=1).is_success:
                return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("the server process did not become ready in 60 s")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_offloading_resumes_soon_after_a_killed_server_returns(
    repo: Path, local: Model, x: np.ndarray
) -> None:
    """Killed with SIGKILL, away for longer than the breaker's first open times, back on
    the same ports: both transports go remote again within about 2 s (the breaker's cap)."""
    port, grpc_port = _free_port(), _free_port()
    proc = _serve(repo, port, grpc_port)
    offs = {
        "http": Offloader(local, [RemoteModel(f"http://127.0.0.1:{port}", "mlp")], "remote"),
        "grpc": Offloader(
            local, [RemoteModel(f"127.0.0.1:{grpc_port}", "mlp", transport="grpc")], "remote"
        ),
    }
    try:
        for off in offs.values():
            assert off.predict(x).placement == "remote"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # With a 10 s cap, trials came 1, 3, 7 and 15 s after the breaker opened: a server
        # back after 8-10 s waited until 15 s.
        away_until = time.monotonic() + 8.0
        while time.monotonic() < away_until:
            for off in offs.values():
                assert off.predict(x).placement == "local"
            time.sleep(0.02)
        proc = _serve(repo, port, grpc_port)
        back = time.monotonic()
        resumed: dict[str, float] = {}
        while len(resumed) < len(offs) and time.monotonic() - back < 15.0:
            for name, off in offs.items():
                if name not in resumed and off.predict(x).placement == "remote":
                    resumed[name] = time.monotonic() - back
            time.sleep(0.02)
        assert set(resumed) == set(offs), f"still local 15 s after the server returned: {resumed}"
        assert max(resumed.values()) < 4.0, resumed  # seconds; 7 s and more with the old cap
    finally:
        for off in offs.values():
            off.close()
        proc.kill()
        proc.wait()
