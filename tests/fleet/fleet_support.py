"""Helpers of the fleet tests: fleet services as processes, devices, hand-made reports."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeinfer.fleet import reports as wire
from edgeinfer.fleet.client import ClientConfig, FleetClient

ADMIN = "fleet-admin-token-for-tests"
SHA = "ab" * 32
# one TLS context for every request of the tests: httpx reads the whole CA bundle for each
# new one (about 90 ms), which a burst of reports would otherwise spend on every post
TLS = httpx.create_ssl_context()
HARDWARE = {"hardware_class": "test-x86_64", "machine": "x86_64", "system": "linux", "cpus": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(version: int = 2, result: str = "updated", reason: str | None = None) -> dict[str, Any]:
    """An agent's status.json after a cycle."""
    return {
        "device_id": "agent-1",
        "agent_version": "0.1.0",
        "channel": "stable",
        "updated_at": "2026-12-04T10:00:00Z",
        "active": {
            "slot": "a",
            "name": "digits",
            "version": version,
            "sha256": SHA,
            "bundle_path": "/state/slots/a/bundle",
        },
        "last_cycle": {
            "result": result,
            "via": "delta",
            "bytes_downloaded": 5120,
            "reason": reason,
            "from_version": version - 1,
            "to_version": version,
            "seconds": 1.5,
            "finished_at": "2026-12-04T10:00:00Z",
        },
        "bad_versions": [],
    }


def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A new, empty database of ``backend``: its URL for ``--db``."""
    if backend == "sqlite":
        return str(tmp_path / f"fleet-{uuid.uuid4().hex[:8]}.db")
    return new_pg_database(request.getfixturevalue("postgres"))


def new_pg_database(base: str) -> str:
    """A new database on the PostgreSQL server at ``base``: its URL."""
    import psycopg

    name = f"fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(
            f"PostgreSQL's {name} is not installed: run scripts/system-deps.sh "
            "(apt-get install postgresql) to run the fleet tests on PostgreSQL"
        )
    return found


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        pytest.fail("running as root, and runuser is missing to run postgres as another user")
    return ["runuser", "-u", "postgres", "--", *cmd]


class PgCluster:
    """A PostgreSQL cluster of its own (``initdb`` into a temporary folder, ``pg_ctl``), on
    a free loopback port; :meth:`stop` and :meth:`start` again to take it away under load."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        # not under pytest's base temp dir: that one is private to root (0700)
        self.root = Path(tempfile.mkdtemp(prefix="edgeinfer-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no 'postgres' user to run PostgreSQL")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.url = f"postgresql://fleet@127.0.0.1:{self.port}"
        run = subprocess.run(
            _as_pg_user(
                [self.initdb, "-D", str(self.data), "-A", "trust", "-U", "fleet", "--no-sync"]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if run.returncode != 0:
            pytest.fail(f"initdb failed: {run.stderr.strip()[-500:]}")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        start = subprocess.run(
            _as_pg_user(
                [
                    self.pg_ctl,
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if start.returncode != 0:
            tail = self.log.read_text()[-500:] if self.log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {start.stderr.strip()[-300:]} {tail}")

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            _as_pg_user([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class FleetProcess:
    """A fleet service in its own process."""

    proc: subprocess.Popen[str]
    url: str
    db: str
    output: list[str]
    pump: threading.Thread

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

        self._close()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown, no flush
        self.proc.wait(15)
        self._close()

    def _close(self) -> None:
        self.pump.join(30)  # EOF once the service (and every child holding its stdout) is gone
        assert not self.pump.is_alive(), "something still holds the fleet service's stdout"
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def admin(self, method: str, route: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {ADMIN}"}
        return httpx.request(
            method, self.url + route, headers=headers, timeout=30, verify=TLS, **kw
        )


def start_fleet(db: str, port: int = 0, *options: str) -> FleetProcess:
    env = {**os.environ, "EDGEINFER_ADMIN_TOKEN": ADMIN}
    command = [sys.executable, "-m", "edgeinfer", "fleet", "serve", "--db", db]
    proc = subprocess.Popen(
        [*command, "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    output: list[str] = []
    first = threading.Event()

    def pump() -> None:  # keeps the pipe drained for the life of the process
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            first.set()
        first.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if not first.wait(60) or not output or not output[0].startswith("fleet service on "):
        proc.kill()
        proc.wait(15)
        reader.join(30)
        proc.stdout.close()
        pytest.fail(f"the fleet service did not start: {''.join(output)[-800:]}")
    url = output[0].split()[-1]
    deadline = time.monotonic() + 60
    while True:  # the address is printed just before uvicorn starts accepting
        try:
            httpx.get(url + "/v1/health", timeout=5).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"the fleet service does not answer: {''.join(output)[-800:]}")
            time.sleep(0.05)
    return FleetProcess(proc, url, db, output, reader)


def token(fleet: FleetProcess, uses: int = 1) -> str:
    answer = fleet.admin("POST", "/v1/tokens", json={"uses": uses})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def device(fleet: FleetProcess, state_dir: Path, uses: int = 1, **kw: Any) -> FleetClient:
    """An enrolled device (its own key, its own token)."""
    client = FleetClient(ClientConfig(fleet.url, state_dir, enroll_token=token(fleet, uses), **kw))
    client.enroll()
    return client


def document(client: FleetClient, counter: int, **changes: Any) -> dict[str, Any]:
    """A valid report document of ``client`` with ``counter``; ``changes`` override fields."""
    doc: dict[str, Any] = {
        "device_id": client.device_id,
        "counter": counter,
        "bundle_sha256": SHA,
        "created_at_ms": int(time.time() * 1000),
        "payload": {
            "agent_version": "0.1.0",
            "active": {"slot": "a", "name": "digits", "version": 2, "sha256": SHA},
            "hardware": HARDWARE,
        },
    }
    doc.update(changes)
    return doc


def sealed(key: Ed25519PrivateKey, doc: dict[str, Any]) -> bytes:
    return wire.seal(key, "report", doc)


def post(fleet: FleetProcess, body: bytes, route: str = "/v1/reports") -> httpx.Response:
    return httpx.post(
        fleet.url + route,
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
        verify=TLS,
    )


def refused(answer: httpx.Response, status: int, fragment: str) -> None:
    """``answer`` is a ``status`` refusal whose one-line reason holds ``fragment``."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert fragment in error, error
    assert "\n" not in error
