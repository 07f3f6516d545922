"""Helpers of the fleet tests: fleet services as processes, devices, hand-made reports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
    import psycopg

    base = request.getfixturevalue("postgres")
    name = f"fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


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
        return httpx.request(method, self.url + route, headers=headers, timeout=30, **kw)


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
        fleet.url + route, content=body, headers={"content-type": "application/json"}, timeout=30
    )


def refused(answer: httpx.Response, status: int, fragment: str) -> None:
    """``answer`` is a ``status`` refusal whose one-line reason holds ``fragment``."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert fragment in error, error
    assert "\n" not in error
