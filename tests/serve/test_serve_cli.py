"""``edgeinfer serve`` as a user runs it: a real process, real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import serve_helpers as h

from edgeinfer.cli.main import main
from edgeinfer.serve import BackgroundServer, ServeConfig
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
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
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
                # live, not ready: the broken model keeps it from being ready
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200:
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
    assert "without a token" not in out  # loopback: no exposure warning
    # what was loaded, and what was not and why, one line each, after the banner
    lines = [line.strip() for line in out.splitlines()]
    start = next(i for i, line in enumerate(lines) if "REST on 127.0.0.1" in line)
    assert "model mlp: versions 1, 2 on onnxruntime" in lines[start + 1 :]
    assert "model fixed: version 1 on onnxruntime" in lines[start + 1 :]
    (broken,) = [line for line in lines if line.startswith("model broken")]
    assert broken.startswith("model broken version 1 not loaded: ") and "not a" in broken


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


@pytest.fixture
def busy_port() -> Any:
    """A port another program listens on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("option", "what", "hint"),
    [("--port", "REST", "choose another --port"), ("--grpc-port", "gRPC", "another --grpc-port")],
)
def test_port_in_use_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    busy_port: int,
    option: str,
    what: str,
    hint: str,
) -> None:
    ports = {"--port": "0", "--grpc-port": "0", option: str(busy_port)}
    args = [a for kv in ports.items() for a in kv]
    with pytest.raises(SystemExit) as info:
        main(["serve", str(h.repository(tmp_path / "repo")), "--poll", "0", *args])
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{what} port {busy_port} of 127.0.0.1: it is already in use" in err
    assert "REST on" not in captured.out  # no banner for a server that never listened
    assert hint in err


def test_grpc_port_taken_during_startup_is_one_error(tmp_path: Path, busy_port: int) -> None:
    """The gRPC server binds inside the app's startup; a port taken there (after the CLI's
    check) still ends as one InputError naming it, not a traceback."""
    from edgeinfer.errors import InputError

    config = h.config(h.repository(tmp_path / "repo"), grpc_port=busy_port)
    with pytest.raises(InputError, match=f"gRPC port {busy_port} of 127.0.0.1"):
        BackgroundServer(config).start()


def test_grpc_port_in_use_in_a_real_process(tmp_path: Path, busy_port: int) -> None:
    root = h.repository(tmp_path / "repo")
    grpc = ["--grpc-port", str(busy_port), "--poll", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "serve", str(root), "--port", "0", *grpc],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "REST on" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"gRPC port {busy_port}" in lines[0], proc.stderr


def _config_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str]) -> ServeConfig:
    import edgeinfer.serve.server as server

    seen: list[ServeConfig] = []
    monkeypatch.setattr(server, "run_server", lambda config, **_: seen.append(config))
    with pytest.raises(SystemExit) as info:
        main(["serve", str(h.repository(tmp_path / "repo")), *args])
    assert info.value.code in (0, None)
    (config,) = seen
    return config


def test_tokens_from_files_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# inference clients\nt0k\n\n  t1k  \n")
    admin = tmp_path / "admin"
    admin.write_text("adm1n\n")
    config = _config_of(
        monkeypatch,
        tmp_path,
        ["--token-file", str(tokens), "--admin-token-file", str(admin), "--token", "t2k"],
    )
    assert sorted(config.tokens) == ["t0k", "t1k", "t2k"]
    assert config.admin_tokens == ("adm1n",)
    monkeypatch.setenv("EDGEINFER_TOKEN", "e0 e1")
    monkeypatch.setenv("EDGEINFER_ADMIN_TOKEN", "ea")
    config = _config_of(monkeypatch, tmp_path, [])
    assert config.tokens == ("e0", "e1") and config.admin_tokens == ("ea",)


def test_connection_options_reach_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config_of(monkeypatch, tmp_path, [])
    assert (config.header_timeout_s, config.body_timeout_s) == (60.0, 60.0)
    assert (config.max_header_bytes, config.max_connections) == (16384, 1000)
    timeouts = ["--header-timeout", "5", "--body-timeout", "7"]
    config = _config_of(
        monkeypatch,
        tmp_path,
        [*timeouts, "--max-header-bytes", "8192", "--max-connections", "0"],
    )
    assert (config.header_timeout_s, config.body_timeout_s) == (5.0, 7.0)
    assert config.max_header_bytes == 8192 and config.max_connections is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-file", "/nonexistent/tokens"], "--token-file /nonexistent/tokens: cannot read"),
        (["--admin-token-file", "{empty}"], "no token in it"),
        (["--token-file", "{spaced}"], "a line holds spaces"),
        (["--header-timeout", "0"], "header_timeout_s 0.0 must be > 0"),
        (["--max-connections", "-1"], "max_connections -1 must be >= 1"),
        (["--max-header-bytes", "10"], "at least 256 bytes"),
    ],
)
def test_bad_connection_and_token_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").write_text("# nothing\n\n")
    (tmp_path / "spaced").write_text("two tokens\n")
    args = [a.format(empty=tmp_path / "empty", spaced=tmp_path / "spaced") for a in args]
    with pytest.raises(SystemExit) as info:
        main(["serve", str(h.repository(tmp_path / "repo")), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_help_says_where_tokens_go(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--token-file", "EDGEINFER_TOKEN", "shows in `ps`", "/metrics needs a"):
        assert needle in text, needle
