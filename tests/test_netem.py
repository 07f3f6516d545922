"""The network emulator: a real TCP echo server on loopback behind a real NetemProxy.

Only lower bounds on time are asserted (a delay the proxy adds can only make things
slower, never faster, so they hold however loaded the machine is).
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.errors import InputError
from edgeinfer.netem import (
    Conditions,
    EmulatedClient,
    EmulatedDevice,
    NetemProxy,
    parse_address,
    parse_duration,
    parse_rate,
)
from edgeinfer.netem.proxy import _Bucket
from onnx_builders import make_mlp


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # the proxy reset the connection: that is what some tests do


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _connect(proxy: NetemProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("250us", 250e-6), ("1.5 ms", 0.0015), (0.3, 0.3), ("1m", 60)],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "bits"),
    [("10mbit", 10e6), ("500kbit", 500e3), ("1Gbit", 1e9), ("2mbit/s", 2e6), (1e6, 1e6)],
)
def test_parse_rate(text: str | float, bits: float) -> None:
    assert parse_rate(text) == pytest.approx(bits)


def test_unlimited_rate() -> None:
    assert parse_rate(None) is None
    assert parse_rate("0") is None
    assert parse_rate(0) is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: parse_duration("50"), "duration '50' not understood.*'50ms'"),
        (lambda: parse_duration("fast"), "not understood"),
        (lambda: parse_duration(-1.0), "negative"),
        (lambda: parse_rate("10mbps"), "rate '10mbps' not understood.*'10mbit'"),
        (lambda: parse_address("localhost"), "expected HOST:PORT"),
        (lambda: parse_address("127.0.0.1:99999"), "out of range"),
        (lambda: Conditions.of(None, delay="5ms"), "unknown link condition.*delay"),
        (lambda: Conditions.of(None, rtt="soon"), "rtt 'soon' not understood"),
        (lambda: Conditions(loss=1.5), "not a probability"),
    ],
)
def test_bad_conditions_say_what_is_expected(call: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        call()  # type: ignore[operator]


def test_conditions_of_keeps_what_is_not_changed() -> None:
    c = Conditions.of(None, rtt="40ms", rate="10mbit")
    d = Conditions.of(c, rate_down="1mbit")
    assert d.rtt == pytest.approx(0.04)
    assert d.rate_up == pytest.approx(10e6)
    assert d.rate_down == pytest.approx(1e6)


def test_token_bucket_in_virtual_time() -> None:
    b = _Bucket()
    # 8 kbit/s = 1000 bytes/s, burst 100 bytes: the first 100 bytes pass at once.
    assert b.transmit(100, 0.0, 8000.0, 100) == pytest.approx(0.0)
    # The next 1000 bytes leave the link one second later.
    assert b.transmit(1000, 0.0, 8000.0, 100) == pytest.approx(1.0)
    # The link is busy until t=1: 500 more bytes sent at t=0.5 leave at t=1.5.
    assert b.transmit(500, 0.5, 8000.0, 100) == pytest.approx(1.5)
    # After a long idle time the bucket holds one burst, not more.
    assert b.transmit(200, 100.0, 8000.0, 100) == pytest.approx(100.1)
    # No rate: no waiting.
    assert b.transmit(10**9, 200.0, None, 100) == 200.0


# ------------------------------------------------------------------ forwarding
def test_bytes_arrive_intact_both_ways(echo: str) -> None:
    payload = os.urandom(1 << 20)
    with NetemProxy(echo, rate="200mbit", jitter="1ms", seed=1) as proxy, _connect(proxy) as s:
        assert _roundtrip(s, payload) == payload
        assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == len(payload)
    assert proxy.stats.bytes_down == len(payload)


def test_rtt_and_rate_only_ever_add_time(echo: str) -> None:
    with NetemProxy(echo, rtt="100ms") as proxy, _connect(proxy) as s:
        start = time.perf_counter()
        assert _roundtrip(s, b"ping") == b"ping"
        assert time.perf_counter() - start >= 0.1
        # 100 kB at 8 Mbit/s needs 0.1 s each way on the wire.
        proxy.set(rtt=0, rate="8mbit")
        start = time.perf_counter()
        assert _roundtrip(s, b"x" * 100_000) == b"x" * 100_000
        assert time.perf_counter() - start >= 0.09
        assert proxy.conditions.rate_up == pytest.approx(8e6)


def test_blackhole_outage_holds_bytes_until_restored(echo: str) -> None:
    with NetemProxy(echo) as proxy, _connect(proxy) as s:
        assert _roundtrip(s, b"before") == b"before"
        proxy.outage(None)
        assert proxy.in_outage
        s.settimeout(0.2)
        s.sendall(b"during")
        with pytest.raises(socket.timeout):
            s.recv(100)
        proxy.restore()
        s.settimeout(5.0)
        assert s.recv(100) == b"during"  # held, then delivered: TCP would retransmit
        assert not proxy.in_outage


def test_refuse_outage_resets_and_refuses(echo: str) -> None:
    with NetemProxy(echo) as proxy:
        s = _connect(proxy)
        assert _roundtrip(s, b"a") == b"a"
        proxy.outage(None, mode="refuse")
        with pytest.raises(OSError):  # reset by the proxy
            s.sendall(b"b")
            if not s.recv(10):
                raise ConnectionResetError
        s.close()
        with pytest.raises(ConnectionRefusedError):
            _connect(proxy)
        proxy.restore()
        for _ in range(100):  # the listener comes back on the same port
            try:
                s2 = _connect(proxy)
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        with s2:
            assert _roundtrip(s2, b"back") == b"back"
        assert proxy.stats.resets >= 1


def test_loss_resets_connections(echo: str) -> None:
    with NetemProxy(echo, loss=1.0) as proxy, _connect(proxy) as s:
        s.sendall(b"lost")
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
        assert proxy.stats.resets == 1


def test_nothing_behind_the_proxy_is_a_reset() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening
        with NetemProxy(dead) as proxy:
            try:
                with _connect(proxy) as s:
                    assert s.recv(10) == b""
            except ConnectionResetError:
                pass  # the reset may arrive while connecting or while reading
            assert proxy.stats.connections == 1


def test_start_on_a_busy_port_is_a_clear_error(echo: str) -> None:
    with NetemProxy(echo) as first, pytest.raises(InputError, match="cannot listen"):
        NetemProxy(echo, listen=first.address).start()
    with pytest.raises(InputError, match="not running"):
        NetemProxy(echo).outage(1.0)


def test_outage_mode_is_checked(echo: str) -> None:
    with NetemProxy(echo) as proxy, pytest.raises(InputError, match="blackhole"):
        proxy.outage(1.0, mode="cut")  # type: ignore[arg-type]


# ------------------------------------------------------------------ device emulation
def test_emulated_device_runs_the_real_model(tmp_path: Path) -> None:
    import edgeinfer

    model = edgeinfer.load(make_mlp(tmp_path / "m.onnx"))
    slow = EmulatedDevice(model, slowdown=3.0)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(slow.predict(x)["logits"], model.predict(x)["logits"])
    assert slow.inputs == model.inputs  # everything else is the model's
    assert "slowdown=3" in repr(slow)
    with pytest.raises(InputError, match=">= 1"):
        EmulatedDevice(model, slowdown=0.5)


class _Remote:
    """A remote model's surface: ``infer`` returns outputs with the call's stats."""

    def __init__(self, codec_s: float) -> None:
        from edgeinfer.offload.transport import CallStats

        self.stats = CallStats(seconds=0.001, up_bytes=10, down_bytes=10, codec_s=codec_s)
        self.calls = 0

    def infer(self, inputs: object, outputs: object = None, **kw: object) -> object:
        from types import SimpleNamespace

        self.calls += 1
        return SimpleNamespace(outputs={"y": np.ones(1)}, stats=self.stats)

    def ready(self) -> float:
        return 0.001


def test_emulated_client_slows_its_own_compression_work() -> None:
    remote = _Remote(codec_s=0.01)
    slow = EmulatedClient(remote, slowdown=4.0)
    start = time.perf_counter()
    result = slow.infer({"x": np.ones(1)}, None, timeout=1.0)
    assert time.perf_counter() - start >= 0.03  # 3 more times the 10 ms of codec work
    assert result.stats is remote.stats and result.stats.seconds == 0.001  # as measured
    assert slow.predict({"x": np.ones(1)})["y"].shape == (1,)
    assert slow.ready() == 0.001 and remote.calls == 2  # everything else is the remote's
    assert "slowdown=4" in repr(slow)
    with pytest.raises(InputError, match=">= 1"):
        EmulatedClient(remote, slowdown=0.5)


# ------------------------------------------------------------------ CLI
def test_cli_runs_and_reports(echo: str, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeinfer.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["netem", "--target", echo, "--listen", "127.0.0.1:0", "--rtt", "20ms",
              "--rate", "10mbit", "--duration", "0"])  # fmt: skip
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "rtt 20 ms" in out
    assert "up 10 Mbit/s" in out
    assert "0 connections" in out


def test_cli_bad_rate_is_one_clear_line(echo: str, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeinfer.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["netem", "--target", echo, "--rate", "fast"])
    assert exc.value.code == 2
    assert "rate 'fast' not understood" in capsys.readouterr().err


def test_netem_in_a_child_process_has_the_same_controls(echo: str) -> None:
    from edgeinfer.netem import NetemProcess

    with NetemProcess(echo, rtt="10ms") as proxy:
        with _connect(proxy) as s:
            assert _roundtrip(s, b"hello") == b"hello"
        assert proxy.conditions.rtt == pytest.approx(0.01)
        assert proxy.set(rate="5mbit").rate_up == pytest.approx(5e6)
        with pytest.raises(InputError, match="rate 'fast' not understood"):
            proxy.set(rate="fast")
        proxy.outage(None, mode="refuse")
        assert proxy.in_outage
        with pytest.raises(ConnectionRefusedError):
            _connect(proxy)
        proxy.restore()
        for _ in range(100):
            try:
                s2 = _connect(proxy)
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        with s2:
            assert _roundtrip(s2, b"back") == b"back"
        assert proxy.stats.bytes_up == len(b"hello") + len(b"back")
    with pytest.raises(InputError, match="not running"):
        proxy.restore()


def test_stop_right_after_an_outage_ends_closes_the_new_listener(echo: str) -> None:
    """The listener a refuse outage re-opens is closed by stop(), even mid-reopen."""
    import gc
    import random

    rng = random.Random(7)
    for _ in range(100):  # before the fix, ~2% of these stops leaked the re-opened listener
        with NetemProxy(echo) as proxy:
            proxy.outage(0.003, mode="refuse")  # ends on its own, around the time stop() runs
            time.sleep(rng.uniform(0.002, 0.004))
    with NetemProxy(echo) as proxy:
        proxy.outage(None, mode="refuse")
        proxy.restore()
        with _connect(proxy) as s:  # restore() returns once connections are accepted again
            assert _roundtrip(s, b"x") == b"x"
    gc.collect()  # an unclosed socket would surface here as an unraisable ResourceWarning


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_netem_child_gets_its_key_over_a_pipe_not_its_argv(echo: str) -> None:
    """Any local user can read /proc/PID/cmdline; the key there would let them send the
    parent pickles. It travels on the child's stdin instead."""
    import re

    from edgeinfer.netem import NetemProcess

    with NetemProcess(echo) as proxy:
        pid = proxy._proc.pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        with _connect(proxy) as s:  # the child did get the key: the control channel works
            assert _roundtrip(s, b"hi") == b"hi"
        assert proxy.conditions.rtt == 0.0
    assert len(argv) == 5 and argv[4] == b""  # python -c CODE HOST:PORT, nothing more
    assert argv[1] == b"-c" and re.fullmatch(rb"127\.0\.0\.1:\d+", argv[3])
    assert [a for a in argv if re.search(rb"[0-9a-f]{32}", a)] == []
