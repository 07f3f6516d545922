"""Hostile clients on the gRPC port, against a real server on loopback: a flood of raw TCP
connections that never speak HTTP/2, a call that opens its stream and never sends its
message, a port another server holds, and the message limit following the models as they
come and go (grpc's server is replaced under a well-behaved client that keeps calling).
Every wait is bounded generously; no assertion is about how long something took."""

from __future__ import annotations

import gc
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import serve_helpers as h

from edgeinfer.errors import InputError
from edgeinfer.protocol import InferenceRequest, InferTensor
from edgeinfer.protocol import grpc_codec as gc_codec
from edgeinfer.serve import BackgroundServer

pytestmark = pytest.mark.timeout(120)

RSS_MARGIN = 64 << 20  # bytes the process may keep after an attack
WAIT_S = 30.0  # the most a test waits for the server to act
INFER = "/inference.GRPCInferenceService/ModelInfer"
WIDE = 4096  # inputs of the model added while serving: 8 rows need ~1.6 MB


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _message(model: str, rows: int, width: int) -> Any:
    x = np.ones((rows, width), np.float32)
    return gc_codec.request_to_proto(
        InferenceRequest([InferTensor.from_array("x", x)], model_name=model)
    )


def _infer(channel: grpc.Channel, msg: Any, timeout: float = WAIT_S) -> Any:
    method = channel.unary_unary(
        INFER,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=gc_codec.pb.ModelInferResponse.FromString,
    )
    return method(msg, timeout=timeout)


class WellBehaved:
    """A gRPC client calling ModelInfer on one channel until stopped (on a thread)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.codes: list[grpc.StatusCode] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        msg = _message("mlp", 1, 4)
        with grpc.insecure_channel(self.target) as channel:
            while not self._stop.is_set():
                try:
                    _infer(channel, msg)
                    self.codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    self.codes.append(exc.code())

    def wait_for(self, answers: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.codes) < answers and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> WellBehaved:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)


def _until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def _outcome(channel: grpc.Channel, msg: Any) -> grpc.StatusCode:
    try:
        _infer(channel, msg)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_the_message_limit_follows_the_models_without_dropping_a_call(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    h.mlp(root / "mlp" / "1" / "model.onnx")
    wide = _message("wide", 8, WIDE)
    with (
        h.running(h.config(root, poll_interval_s=0.2)) as srv,
        grpc.insecure_channel(srv.grpc_target) as channel,
        WellBehaved(srv.grpc_target) as good,
    ):
        good.wait_for(5)
        # grpc itself refuses what no loaded model can need, before it reaches the handler
        assert _outcome(channel, wide) == grpc.StatusCode.RESOURCE_EXHAUSTED
        h.mlp(root / "wide" / "1" / "model.onnx", n_in=WIDE)
        _until(lambda: _outcome(channel, wide) == grpc.StatusCode.OK, "wide answered")
        shutil.rmtree(root / "wide")
        _until(
            lambda: _outcome(channel, wide) == grpc.StatusCode.RESOURCE_EXHAUSTED,
            "wide's messages refused by grpc once it is gone",
        )
        answered = len(good.codes)
        good.wait_for(answered + 5)  # still answered on the channel it opened first
    # A call that reaches the old server in the instant its shutdown begins, before the
    # client has read the GOAWAY, is cancelled by grpc core itself (the server has stopped
    # taking calls); at most one such call per swap, every other call answered.
    swaps = 2  # wide loaded, wide removed
    assert len(good.codes) > swaps
    assert good.codes.count(grpc.StatusCode.OK) >= len(good.codes) - swaps
    assert set(good.codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}


def _closed(sock: socket.socket) -> bool:
    """True once the server has ended the connection (what it said first is read and
    dropped: its HTTP/2 settings, then a GOAWAY)."""
    sock.settimeout(WAIT_S)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def _stalled_call(channel: grpc.Channel, release: threading.Event) -> Any:
    """A call that opens its stream and sends no message until ``release`` is set."""

    def never() -> Iterator[bytes]:
        release.wait(WAIT_S * 2)
        return
        yield b""  # a generator that yields nothing

    method = channel.stream_unary(
        INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    return method.future(never(), timeout=WAIT_S * 3)


def test_an_idle_flood_and_a_silent_stream_leave_grpc_answering(tmp_path: Path) -> None:
    root = h.repository(tmp_path / "repo")
    with h.running(h.config(root, header_timeout_s=1.0)) as srv:
        port = srv.grpc_port
        assert port is not None
        release = threading.Event()
        with grpc.insecure_channel(srv.grpc_target) as silent:
            _infer(silent, _message("mlp", 1, 4))  # the connection is up
            stalled = _stalled_call(silent, release)
            before = _rss()
            flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
            try:
                with WellBehaved(srv.grpc_target) as good:
                    good.wait_for(20)
                    # and on the connection whose stream is stalled, too
                    assert _outcome(silent, _message("mlp", 2, 4)) == grpc.StatusCode.OK
                    # connections that never send HTTP/2's preface are closed after
                    # header_timeout_s
                    for sock in flood:
                        _until(lambda sock=sock: _closed(sock), "an idle connection closed")
                    answered = len(good.codes)
                    good.wait_for(answered + 5)
            finally:
                for sock in flood:
                    sock.close()
            assert good.codes and set(good.codes) == {grpc.StatusCode.OK}
            assert not stalled.done()  # the silent call holds its stream, nothing more
            assert stalled.cancel()  # the client gives up; the server lets it go
            release.set()
        grown = _rss() - before
        assert grown < RSS_MARGIN, f"RSS grew by {grown >> 20} MiB"


def test_a_grpc_port_another_server_holds_is_one_line(tmp_path: Path) -> None:
    # grpc shares a port with SO_REUSEPORT while it replaces its server; another server
    # must still find the port taken
    root = h.repository(tmp_path / "repo")
    with h.running(h.config(root)) as first:
        with pytest.raises(InputError, match=r"^cannot listen on gRPC port \d+ of 127\.0\.0\.1: "):
            BackgroundServer(h.config(root, grpc_port=first.grpc_port)).start()
        with grpc.insecure_channel(first.grpc_target) as channel:
            assert _outcome(channel, _message("mlp", 1, 4)) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grpc_max_streams": 0}, "grpc_max_streams 0 must be >= 1"),
        ({"grpc_idle_timeout_s": 0.0}, "grpc_idle_timeout_s 0.0 must be > 0"),
    ],
)
def test_bad_grpc_connection_settings(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=f"^{message}$"):
        h.config(tmp_path, **changes)
