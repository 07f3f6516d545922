"""The fleet under faults: its database restarted under load, clients that hold connections.

Real parts only: a PostgreSQL server of the test's own (stopped and started again while
devices report), fleet services as processes, devices signing real reports.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fleet_support import (
    SHA,
    FleetProcess,
    PgCluster,
    device,
    document,
    fresh_database,
    new_pg_database,
    post,
    sealed,
    start_fleet,
    status,
    token,
)
from sqlalchemy import select

from edgeinfer._rollout import rollout_bucket
from edgeinfer.fleet.client import ClientConfig, FleetClient, FlushResult, report_cycle
from edgeinfer.fleet.store import Report, StoreConfig, open_store

pytestmark = pytest.mark.timeout(180)


def stored_reports(db: str) -> set[tuple[str, int]]:
    store = open_store(StoreConfig(db))
    try:
        with store.session() as session:
            rows = session.execute(select(Report.device_id, Report.counter))
            return {(r.device_id, r.counter) for r in rows}
    finally:
        store.close()


class Burst:
    """Devices each sending their next report as soon as the last was accepted, and
    resending it after a 503 (as a device's outbox does); every answer is recorded."""

    def __init__(self, service: FleetProcess, clients: list[FleetClient]) -> None:
        self.service, self.clients = service, clients
        self.accepted: list[tuple[str, int]] = []
        self.unavailable = 0  # 503 answers, each with a Retry-After
        self.wrong: list[str] = []  # any other answer
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in clients]

    def _run(self, client: FleetClient) -> None:
        counter = 1
        while not self.stop.is_set():
            body = sealed(client.key, document(client, counter))
            try:
                answer = post(self.service, body)
            except httpx.HTTPError as exc:  # the service itself never goes away here
                with self.lock:
                    self.wrong.append(f"{type(exc).__name__}: {exc}")
                return
            with self.lock:
                if answer.status_code == 200:
                    self.accepted.append((client.device_id, counter))
                    counter += 1
                elif answer.status_code == 503 and answer.headers.get("retry-after"):
                    self.unavailable += 1
                    time.sleep(0.05)  # then the same report again
                else:
                    self.wrong.append(f"{answer.status_code} {answer.text[:200]}")
                    return

    def __enter__(self) -> Burst:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def wait(self, until: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s  # a bound on a busy machine, not a measurement
        while not until():
            assert not self.wrong, self.wrong[:3]
            assert time.monotonic() < deadline, f"waited in vain for {what}"
            time.sleep(0.02)


@pytest.mark.slow  # a PostgreSQL server of its own, stopped and started: seconds
def test_the_database_restarted_under_load(own_postgres: PgCluster, tmp_path: Path) -> None:
    db = new_pg_database(own_postgres.url)
    service = start_fleet(db)
    try:
        clients = [device(service, tmp_path / f"dev{i}") for i in range(3)]
        quiet = device(service, tmp_path / "quiet")  # reports through its outbox
        assert report_cycle(quiet, status(2)).sent == 1
        with Burst(service, clients) as burst:
            burst.wait(lambda: len(burst.accepted) >= 20, "reports before the restart")
            own_postgres.stop("immediate")  # as a crash: connections cut, nothing flushed
            before = len(burst.accepted)
            burst.wait(lambda: burst.unavailable >= 3, "503 answers while the database is away")
            kept = report_cycle(quiet, status(3))  # the answer is a 503: the report waits
            assert (kept.sent, kept.kept) == (0, 1)
            own_postgres.start()
            burst.wait(lambda: len(burst.accepted) >= before + 20, "reports after the restart")
        assert burst.wrong == []
        assert len(set(burst.accepted)) == len(burst.accepted)
        drained = quiet.flush()
        assert (drained.sent, drained.refused, drained.kept) == (1, 0, 0)
        detail = service.admin("GET", f"/v1/devices/{quiet.device_id}").json()
        assert (detail["reports"], detail["version"]) == (2, 3)
    finally:
        service.stop()
    stored = stored_reports(db)
    assert set(burst.accepted) <= stored, f"lost: {sorted(set(burst.accepted) - stored)[:5]}"
    logs = "".join(service.output)
    assert "Traceback" not in logs and "Exception in ASGI" not in logs, logs[-2000:]


def _address(service: FleetProcess) -> tuple[str, int]:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _answer(sock: socket.socket) -> str:
    """Everything the service sends on ``sock`` until it closes it."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received.decode()


def test_a_slowloris_client_is_cut_off_and_a_huge_head_refused(tmp_path: Path) -> None:
    service = start_fleet(str(tmp_path / "fleet.db"), 0, "--header-timeout", "1")
    try:
        head = b"POST /v1/reports HTTP/1.1\r\nHost: fleet\r\nX-Padding: " + b"a" * 400
        with (
            socket.create_connection(_address(service), timeout=30) as slow,
            socket.create_connection(_address(service), timeout=30) as silent,
        ):
            slow.settimeout(0.2)
            cut = False
            for byte in head:  # one byte every 0.2 s: the head never ends
                try:
                    slow.sendall(bytes([byte]))
                    if slow.recv(4096, socket.MSG_PEEK):
                        cut = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    cut = True
                    break
            assert cut, "the service was still reading the head after 400 bytes"
            slow.settimeout(30)
            answer = _answer(slow)
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "request line and headers not received within 1 s" in answer
            assert _answer(silent) == ""  # it asked nothing: closed without an answer
        with socket.create_connection(_address(service), timeout=30) as huge:
            huge.sendall(b"GET /v1/health HTTP/1.1\r\nX-Padding: " + b"a" * 20000 + b"\r\n\r\n")
            answer = _answer(huge)
        assert answer.startswith("HTTP/1.1 431"), answer[:200]
        assert httpx.get(service.url + "/v1/health", timeout=30).status_code == 200
    finally:
        service.stop()


def test_connections_past_the_cap_are_refused_with_retry_after(tmp_path: Path) -> None:
    service = start_fleet(str(tmp_path / "fleet.db"), 0, "--max-connections", "2")
    try:
        held = [socket.create_connection(_address(service), timeout=30) for _ in range(2)]
        for sock in held:  # a head begun and never finished: each holds a place
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: fleet\r\n")
        with socket.create_connection(_address(service), timeout=30) as third:
            third.sendall(b"GET /v1/health HTTP/1.1\r\nHost: fleet\r\n\r\n")
            answer = _answer(third)
        assert answer.startswith("HTTP/1.1 503"), answer
        assert "retry-after: 1" in answer.lower() and "its limit" in answer
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 30  # until the service has seen them go
        while True:
            try:
                if httpx.get(service.url + "/v1/health", timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no place came free"
            time.sleep(0.05)
    finally:
        service.stop()


def _cycle(
    client: FleetClient, agent: str, version: int, result: str, to: int, model: str = "revocable"
) -> FlushResult:
    """Report one agent cycle of ``model``: ``result`` going to version ``to``."""
    reason = f"version {to} failed its health gate" if result == "rolled-back" else None
    return report_cycle(
        client,
        {
            "device_id": agent,
            "agent_version": "0.1.0",
            "active": {"slot": "a", "name": model, "version": version, "sha256": SHA},
            "last_cycle": {"result": result, "to_version": to, "reason": reason},
        },
    )


def test_a_device_revoked_mid_rollout_no_longer_counts(tmp_path: Path) -> None:
    key = tmp_path / "rollout-key.pem"
    service = start_fleet(
        str(tmp_path / "fleet.db"), 0, "--rollout-key", str(key), "--rollout-tick", "0.2"
    )
    try:
        agents = [f"dev-{i}" for i in range(40)]
        inside = [a for a in agents if rollout_bucket(a, "revocable") < 50][:4]
        outside = [a for a in agents if rollout_bucket(a, "revocable") >= 50][:2]
        shared = token(service, uses=6)
        clients = {
            a: FleetClient(ClientConfig(service.url, tmp_path / a, enroll_token=shared))
            for a in inside + outside
        }
        for agent, client in clients.items():
            assert _cycle(client, agent, 1, "up-to-date", 1).sent == 1
        plan = {"stages": [50, 100], "max_failure": 0.2, "min_devices": 3}
        body = {"model": "revocable", "version": 2, **plan}
        assert service.admin("POST", "/v1/rollouts", json=body).status_code == 200

        # a device of the first stage reports a failure, then its key is revoked (stolen,
        # say): what it said stops counting, and what it says next is refused
        thief, *honest = inside
        assert _cycle(clients[thief], thief, 1, "rolled-back", 2).sent == 1
        failed = service.admin("GET", "/v1/rollouts/revocable").json()
        assert (failed["failed"], failed["state"]) == (1, "running")  # 1 < min devices
        revoked = service.admin("POST", f"/v1/devices/{clients[thief].device_id}/revoke")
        assert revoked.status_code == 200
        after = _cycle(clients[thief], thief, 1, "rolled-back", 2)
        assert (after.sent, after.refused, after.kept) == (0, 1, 0)
        assert service.admin("GET", "/v1/rollouts/revocable").json()["failed"] == 0

        # the three honest devices of the stage succeed: 0 of 3 failed, promoted (counted
        # with the revoked one, 1 of 4 = 25 % would have halted it)
        for agent in honest:
            assert _cycle(clients[agent], agent, 2, "updated", 2).sent == 1
        state = service.admin("GET", "/v1/rollouts/revocable").json()
        assert (state["state"], state["stage"], state["ok"]) == ("running", 1, 3), state
        assert [e["kind"] for e in state["events"]] == ["started", "promoted"]
        listed = {d["id"]: d for d in service.admin("GET", "/v1/devices").json()}
        assert listed[clients[thief].device_id]["state"] == "revoked"
    finally:
        service.stop()


ROUNDS = 3  # chances for the two decisions to meet


@pytest.mark.slow  # two services on one PostgreSQL, nine devices
def test_two_replicas_deciding_one_stage_at_once_promote_it_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db = fresh_database(request, "postgresql", tmp_path)
    # the timers tick once an hour: only the reports below decide
    options = ("--rollout-key", str(tmp_path / "rollout-key.pem"), "--rollout-tick", "3600")
    replicas = [start_fleet(db, 0, *options), start_fleet(db, 0, *options)]
    try:
        for round_ in range(ROUNDS):
            model = f"raced-{round_}"
            agents = [f"dev-{i}" for i in range(100)]
            pair = [a for a in agents if rollout_bucket(a, model) < 50][:2]
            later = next(a for a in agents if rollout_bucket(a, model) >= 50)  # stage 2
            # each of the stage's two devices reports to its own replica
            clients = [
                FleetClient(ClientConfig(r.url, tmp_path / model / a, enroll_token=token(r)))
                for r, a in zip(replicas * 2, [*pair, later], strict=False)
            ]
            for agent, client in zip([*pair, later], clients, strict=True):
                assert _cycle(client, agent, 1, "up-to-date", 1, model).sent == 1
            plan = {"stages": [50, 100], "max_failure": 0.1, "min_devices": 2}
            body = {"model": model, "version": 2, **plan}
            assert replicas[0].admin("POST", "/v1/rollouts", json=body).status_code == 200
            barrier = threading.Barrier(2)
            sent: list[int] = []

            def report(i: int, model: str = model, barrier: threading.Barrier = barrier) -> None:
                barrier.wait(30)
                sent.append(_cycle(clients[i], pair[i], 2, "updated", 2, model).sent)

            threads = [threading.Thread(target=report, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sent == [1, 1]
            state = replicas[1].admin("GET", f"/v1/rollouts/{model}").json()
            kinds = [(e["kind"], e["detail"].get("to_stage")) for e in state["events"]]
            assert kinds == [("started", None), ("promoted", 1)], state
            assert (state["stage"], state["ok"]) == (1, 2)
    finally:
        for replica in replicas:
            replica.stop()
    logs = "".join(replicas[0].output + replicas[1].output)
    assert "Traceback" not in logs and "IntegrityError" not in logs, logs[-2000:]
