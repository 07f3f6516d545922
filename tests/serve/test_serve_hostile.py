"""Clients that never finish a request, against a real server on loopback.

Each test does what an attacker does, on raw sockets: a header that never ends, too many
header fields, connections that send nothing, a request head or a body trickled a byte at
a time, a body shorter than its Content-Length, more connections than the server serves.
Each asserts what the attacker is answered, that a well-behaved client is answered while
the attack runs, and that the process's RSS (the server runs in it) comes back within a
small margin. Deadlines are shortened to a second so that the tests stay short; every wait
is bounded generously, and no assertion is about how long something took.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import serve_helpers as h

from edgeinfer import _http
from edgeinfer.errors import InputError
from edgeinfer.serve import BackgroundServer, ServeConfig

RSS_MARGIN = 32 << 20  # bytes the process may keep after an attack
WAIT_S = 20.0  # the most any test waits for the server to act (its deadlines are 1 s)
CHUNK = b"a" * 65536

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.repository(tmp_path_factory.mktemp("hostile") / "repo")


def _config(repo: Path, **changes: Any) -> ServeConfig:
    base = {"grpc_port": None, "header_timeout_s": 1.0, "body_timeout_s": 1.0}
    return h.config(repo, **{**base, **changes})


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@contextlib.contextmanager
def _rss_comes_back(margin: int = RSS_MARGIN) -> Iterator[None]:
    before = _rss()
    yield
    after = _rss()
    assert after - before < margin, f"RSS grew by {(after - before) >> 20} MiB"


def _well_behaved(srv: BackgroundServer) -> None:
    r = httpx.post(
        f"{srv.url}/v2/models/mlp/infer", json=h.infer_body([[1.0, 2.0, 3.0, 4.0]]), timeout=30
    )
    assert r.status_code == 200, r.text


def _connect(srv: BackgroundServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S)
    if first:
        sock.sendall(first)
    return sock


def _head(path: str = "/v2/models/mlp/infer", **fields: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int | None, dict[str, Any] | None, bytes]:
    """Read until the server closes: (status or None if it said nothing, JSON body, head)."""
    data = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    assert time.monotonic() < deadline, "the server did not end the connection"
    if not data:
        return None, None, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), json.loads(body), head


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _trickle(socks: list[socket.socket], piece: bytes, every_s: float = 0.2) -> list[bytes]:
    """Send ``piece`` on every socket every ``every_s`` until the server has answered or
    closed each; returns what each received."""
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + WAIT_S
    while len(got) < len(socks) and time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            if i in got:
                continue
            if _readable(sock):
                got[i] = _drain(sock)
                continue
            try:
                sock.send(piece)
            except OSError:
                got[i] = _drain(sock)
        time.sleep(every_s)
    assert len(got) == len(socks), f"{len(socks) - len(got)} connections still held"
    return [got[i] for i in range(len(socks))]


def _drain(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status(raw: bytes) -> int | None:
    return int(raw[9:12]) if raw.startswith(b"HTTP/1.1 ") else None


# ---------------------------------------------------------------- request heads
def test_endless_header_is_refused_and_memory_stays_put(repo: Path) -> None:
    """10 connections each sending a header that never ends (up to 64 MiB each): every one
    is answered 431 after a few KiB past the limit, and the server holds none of it."""
    with h.running(_config(repo)) as srv, _rss_comes_back():
        socks = [_connect(srv, _head() + b"X-Filler: ") for _ in range(10)]
        answers: dict[int, bytes] = {}
        sent = dict.fromkeys(range(10), 0)
        while len(answers) < 10:
            for i, sock in enumerate(socks):
                if i in answers:
                    continue
                assert sent[i] < 64 << 20, "64 MiB of one header accepted"
                if _readable(sock):
                    answers[i] = _drain(sock)
                    continue
                try:
                    sock.sendall(CHUNK)
                    sent[i] += len(CHUNK)
                except OSError:
                    answers[i] = _drain(sock)
            if len(answers) == 5:
                _well_behaved(srv)  # half the attackers are still sending
        _well_behaved(srv)
        for sock in socks:
            sock.close()
    assert all(_status(a) == 431 for a in answers.values()), answers
    body = json.loads(answers[0].partition(b"\r\n\r\n")[2])
    assert "exceed the limit of 16384 bytes" in body["error"]


def test_refused_clients_that_linger_hold_no_memory_and_no_place(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 clients each send a quarter MiB of one header, then neither read nor close.
    Each is answered 431; while the server waits for them to go (lingering, stretched here
    to a minute), it holds none of their headers and none of its 20 places."""
    monkeypatch.setattr(_http, "LINGER_S", 60.0)
    payload = _head() + b"X-Filler: " + b"a" * (256 << 10)
    with h.running(_config(repo, max_connections=20)) as srv:
        with _rss_comes_back(margin=16 << 20):
            socks = []
            for _ in range(300):
                sock = _connect(srv)
                assert sock.send(payload) > 16384  # as much as the socket takes at once
                socks.append(sock)
            answers = [_one_answer(sock) for sock in socks]
            _well_behaved(srv)
        for sock in socks:
            sock.close()
    assert {status for status, _ in answers} == {431}


def _one_answer(sock: socket.socket) -> tuple[int, bytes]:
    """Read one answer with a Content-Length, leaving the connection as it is."""
    status, body, _ = _answer_keepalive(sock)
    return status, body


@pytest.mark.parametrize(
    ("head", "message"),
    [
        # a whole head in one piece, over the limit: measured when it completes
        (_head(X_Filler="a" * 20000) + b"\r\n", "exceed the limit of 16384 bytes"),
        (_head(**{f"X_{i}": "1" for i in range(101)}) + b"\r\n", "more than 100 header fields"),
        (b"GET /v2/health/live?" + b"q" * 20000 + b" HTTP/1.1\r\n\r\n", "exceed the limit"),
    ],
)
def test_oversized_heads_are_answered_431(repo: Path, head: bytes, message: str) -> None:
    with h.running(_config(repo)) as srv:
        with _connect(srv, head) as sock:
            status, body, _ = _answer(sock)
        assert status == 431 and body is not None and message in body["error"]
        _well_behaved(srv)


def test_heads_within_the_limits_are_served(repo: Path) -> None:
    with h.running(_config(repo)) as srv:
        headers = {f"x-{i}": "v" * 100 for i in range(90)}  # ~10 KiB, 90 fields
        r = httpx.post(
            f"{srv.url}/v2/models/mlp/infer",
            json=h.infer_body([[1.0, 2.0, 3.0, 4.0]]),
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200, r.text


def test_header_limits_are_settings(repo: Path) -> None:
    with h.running(_config(repo, max_header_bytes=2048, max_headers=5)) as srv:
        with _connect(srv, _head(X_Filler="a" * 3000) + b"\r\n") as sock:
            assert _answer(sock)[0] == 431
        with _connect(srv, _head(**{f"X_{i}": "1" for i in range(6)}) + b"\r\n") as sock:
            status, body, _ = _answer(sock)
            assert status == 431 and body is not None
            assert "more than 5 header fields" in body["error"]


# ---------------------------------------------------------------- connections held open
def test_idle_connections_are_closed(repo: Path) -> None:
    """500 connections that never send a byte are closed at the header deadline (nothing
    was asked, so nothing is answered); the well-behaved client is served meanwhile."""
    with h.running(_config(repo)) as srv, _rss_comes_back():
        socks = [_connect(srv) for _ in range(500)]
        _well_behaved(srv)
        for sock in socks:
            assert _answer(sock)[0] is None
            sock.close()
        _well_behaved(srv)


def test_slowloris_is_answered_408(repo: Path) -> None:
    """200 connections sending their headers a few bytes at a time, never ending them."""
    with h.running(_config(repo)) as srv, _rss_comes_back():
        socks = [_connect(srv, _head()) for _ in range(200)]
        _well_behaved(srv)
        answers = _trickle(socks, b"X-a: b\r\n")
        _well_behaved(srv)
        for sock in socks:
            sock.close()
    assert {_status(a) for a in answers} == {408}
    assert b"headers not received within 1 s" in answers[0]


def test_slow_body_is_answered_408(repo: Path) -> None:
    """100 connections with whole headers, then a body at one byte per 0.2 s."""
    with h.running(_config(repo)) as srv, _rss_comes_back():
        head = _head(Content_Type="application/json", Content_Length="4000") + b"\r\n"
        socks = [_connect(srv, head) for _ in range(100)]
        _well_behaved(srv)
        answers = _trickle(socks, b" ")
        _well_behaved(srv)
        for sock in socks:
            sock.close()
    assert {_status(a) for a in answers} == {408}
    assert b"request body not received in time" in answers[0]


def test_short_body_is_answered_408(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A body that stops short of its Content-Length: the body deadline ends it, and the
    client's doing leaves no traceback in the server's log."""
    body = json.dumps(h.infer_body([[1.0, 2.0, 3.0, 4.0]])).encode()
    head = _head(Content_Type="application/json", Content_Length=str(len(body))) + b"\r\n"
    caplog.set_level(logging.INFO, logger="edgeinfer")
    with h.running(_config(repo)) as srv, _rss_comes_back():
        socks = [_connect(srv, head + body[: len(body) // 2]) for _ in range(50)]
        _well_behaved(srv)
        answers = [_answer(sock) for sock in socks]
        _well_behaved(srv)
        for sock in socks:
            sock.close()
    assert {status for status, _, _ in answers} == {408}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_slow_but_steady_body_is_not_cut(repo: Path) -> None:
    """Each KiB received earns another second: a body arriving at about 2 KiB/s over three
    times the body deadline is read whole."""
    payload = h.infer_body([[1.0, 2.0, 3.0, 4.0]], id="x" * 5000)
    body = json.dumps(payload).encode()
    head = _head(Content_Type="application/json", Content_Length=str(len(body))) + b"\r\n"
    with h.running(_config(repo)) as srv, _connect(srv, head) as sock:
        for start in range(0, len(body), 1024):
            sock.sendall(body[start : start + 1024])
            time.sleep(0.5)
        status, answer, _ = _answer_keepalive(sock)
    assert status == 200, answer


def _answer_keepalive(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Read one answer with a Content-Length on a connection the server keeps open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return int(head[9:12]), body, head


def test_kept_alive_connection_outlives_the_header_deadline(repo: Path) -> None:
    """The header deadline starts at a request's first byte, not at the last answer: a
    client that pauses between requests longer than it is not cut (uvicorn's keep-alive
    timeout governs idle kept-alive connections)."""
    body = json.dumps(h.infer_body([[1.0, 2.0, 3.0, 4.0]])).encode()
    request = _head(Content_Type="application/json", Content_Length=str(len(body))) + b"\r\n" + body
    with h.running(_config(repo)) as srv, _connect(srv, request) as sock:
        assert _answer_keepalive(sock)[0] == 200
        time.sleep(1.5)  # longer than the 1 s header deadline
        sock.sendall(request)
        assert _answer_keepalive(sock)[0] == 200


# ---------------------------------------------------------------- the connection cap
def test_connections_beyond_the_cap_are_refused_503(repo: Path) -> None:
    cfg = _config(repo, max_connections=20, header_timeout_s=60.0)
    with h.running(cfg) as srv, _rss_comes_back():
        held = [_connect(srv) for _ in range(20)]
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + WAIT_S
            while True:  # the server sees the 20 connections when its loop gets to them
                r = client.get(f"{srv.url}/v2/health/live")
                if r.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "serving 20 connections, its limit" in r.json()["error"]
        for sock in held:
            sock.close()
        deadline = time.monotonic() + WAIT_S
        while True:  # served again once the held connections are gone
            r = httpx.get(f"{srv.url}/v2/health/live", timeout=30)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_header_bytes": 100}, "at least 256 bytes"),
        ({"max_headers": 0}, "at least 256 bytes and 1 field"),
        ({"header_timeout_s": 0.0}, "header_timeout_s 0.0 must be > 0"),
        ({"body_timeout_s": float("nan")}, "body_timeout_s nan must be > 0"),
        ({"min_body_rate": -1.0}, "min_body_rate -1.0 must be > 0"),
        ({"max_connections": 0}, "max_connections 0 must be >= 1"),
    ],
)
def test_bad_connection_settings(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ServeConfig(tmp_path, **changes)
