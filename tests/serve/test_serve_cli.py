"""``edgeinfer serve`` as a user runs it: a real process, real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import serve_helpers as h

from edgeinfer.cli.main import main
from edgeinfer.serve.server import is_loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "edgeinfer", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_serve_command_end_to_end(tmp_path: Path) -> None:
    root = h.repository(tmp_path / "repo")
    port = _free_port()
    proc = _start(
        [
            str(root),
            "--port",
            str(port),
            "--grpc-port",
            "-1",
            "--token",
            "t0k",
            "--poll",
            "0",
            "--threads",
            "1",
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        body = h.infer_body([[1.0, 2.0, 3.0, 4.0]])
        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
        assert httpx.post(url, json=body).status_code == 401
        r = httpx.post(url, json=body, headers={"Authorization": "Bearer t0k"})
        assert r.status_code == 200, r.text
    finally:
        out = _stop(proc)
    assert "REST on 127.0.0.1" in out
    assert "warning" not in out.lower()


def test_warns_on_non_loopback_without_token(tmp_path: Path) -> None:
    root = h.repository(tmp_path / "repo")
    proc = _start([str(root), "--host", "0.0.0.0", "--port", "0", "--grpc-port", "-1"])
    try:
        deadline = time.monotonic() + 30
        first = ""
        while "warning" not in first and time.monotonic() < deadline:
            assert proc.stdout is not None
            first += proc.stdout.readline()
    finally:
        out = first + _stop(proc)
    assert "non-loopback address 0.0.0.0 without a token" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/repo"], "no such model repository"),
        (["{repo}", "--ssl-keyfile", "k.pem"], "both --ssl-keyfile and --ssl-certfile"),
        (["{repo}", "--max-batch-size", "0"], "must be >= 1"),
        (["{repo}", "--switch-interval-ms", "-1"], "must be between 0"),
        (["{repo}", "--switch-interval-ms", "5000"], "must be between 0"),
    ],
)
def test_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [a.replace("{repo}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as info:
        main(["serve", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert not is_loopback("example.com")


@pytest.mark.parametrize(
    ("args", "freeze", "interval"),
    [([], True, 1e-4), (["--no-freeze-heap", "--switch-interval-ms", "0"], False, None)],
)
def test_process_tuning_defaults(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    freeze: bool,
    interval: float | None,
) -> None:
    """The CLI owns its process, so it tunes it (heap freeze, GIL switch interval) unless told
    not to; the library's defaults leave an embedding program's process alone."""
    import edgeinfer.serve.server as server
    from edgeinfer.serve.config import ServeConfig

    seen: list[ServeConfig] = []
    monkeypatch.setattr(server, "run_server", lambda config, **_: seen.append(config))
    with pytest.raises(SystemExit) as info:
        main(["serve", str(h.repository(tmp_path / "repo")), *args])
    assert info.value.code in (0, None)
    (config,) = seen
    assert config.freeze_heap is freeze
    assert config.switch_interval_s == interval
    library = ServeConfig(tmp_path)
    assert not library.freeze_heap and library.switch_interval_s is None
