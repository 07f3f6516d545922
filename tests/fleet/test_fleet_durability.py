"""An accepted report survives the service being killed; a device's outbox outlives outages."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fleet_support import (
    device,
    document,
    free_port,
    fresh_database,
    post,
    sealed,
    start_fleet,
    status,
)
from sqlalchemy import select

from edgeinfer.fleet.client import FleetClient, report_cycle
from edgeinfer.fleet.store import Report, StoreConfig, open_store

pytestmark = pytest.mark.timeout(180)


@pytest.mark.slow  # services started and killed: seconds each
def test_sigkill_during_a_burst_loses_no_accepted_report(database: str, tmp_path: Path) -> None:
    service = start_fleet(database)
    clients = [device(service, tmp_path / f"dev{i}") for i in range(3)]
    # a sketch starts the parser's children: killed with the service, they must not linger
    sketcher = device(service, tmp_path / "sketcher")
    assert report_cycle(sketcher, status(2), latency_ms=[1.0, 2.0]).sent == 1
    accepted: set[tuple[str, int]] = set()
    last_body: dict[str, bytes] = {}
    lock = threading.Lock()

    def burst(client: FleetClient) -> None:
        for counter in range(1, 10_000):
            body = sealed(client.key, document(client, counter))
            last_body[client.device_id] = body
            try:
                answer = post(service, body)
            except httpx.HTTPError:
                return  # the service is gone
            if answer.status_code != 200:
                return
            with lock:
                accepted.add((client.device_id, counter))

    threads = [threading.Thread(target=burst, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(accepted) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    service.kill()  # SIGKILL in the middle of the burst (and its children exit on their own)
    for t in threads:
        t.join(30)
    assert len(accepted) >= 30

    store = open_store(StoreConfig(database))
    try:
        with store.session() as session:
            stored = {
                (r.device_id, r.counter)
                for r in session.execute(select(Report.device_id, Report.counter))
            }
    finally:
        store.close()
    assert accepted <= stored, f"lost: {sorted(accepted - stored)[:5]}"

    # back up: the report each device was sending when the service died goes through now
    # (accepted for the first time, or recognised as already taken), and the next follows
    again = start_fleet(database)
    try:
        for client in clients:
            answer = post(again, last_body[client.device_id])
            assert answer.status_code == 200, answer.text
            counter = answer.json()["counter"]
            follow = post(again, sealed(client.key, document(client, counter + 1)))
            assert follow.status_code == 200 and follow.json()["duplicate"] is False
    finally:
        again.stop()


@pytest.mark.slow  # services started and killed: seconds each
def test_reports_made_while_the_fleet_is_down_are_sent_when_it_is_back(tmp_path: Path) -> None:
    db, port = str(tmp_path / "fleet.db"), free_port()
    first = start_fleet(db, port)
    client = device(first, tmp_path / "dev")
    first.stop()

    kept = [report_cycle(client, status(2), latency_ms=[3.0, 4.0]).kept for _ in range(3)]
    assert kept == [1, 2, 3]
    copy = tmp_path / "copy.json"
    shutil.copy(client.pending()[1], copy)

    back = start_fleet(db, port)
    try:
        result = client.flush()
        assert (result.sent, result.refused, result.kept) == (3, 0, 0)
        assert client.pending() == []
        detail = back.admin("GET", f"/v1/devices/{client.device_id}").json()
        assert (detail["reports"], detail["last_counter"]) == (3, 3)
        # a report sent twice (its answer lost) is taken once: idempotent by counter
        answer = post(back, copy.read_bytes())
        assert answer.status_code == 200 and answer.json()["duplicate"] is True
        assert back.admin("GET", f"/v1/devices/{client.device_id}").json()["reports"] == 3
        after = report_cycle(client, status(3))
        assert (after.sent, after.kept) == (1, 0)
    finally:
        back.stop()


def test_a_refused_report_leaves_the_outbox_and_the_rest_go_on(tmp_path: Path) -> None:
    service = start_fleet(str(tmp_path / "fleet.db"))
    try:
        client = device(service, tmp_path / "dev")
        client.queue(document(client, 0)["payload"], "ab" * 32)
        bad = client.pending()[0]
        text = bad.read_bytes().replace(b'"counter\\":1', b'"counter\\":7')  # breaks the signature
        bad.write_bytes(text)
        client.queue(document(client, 0)["payload"], "ab" * 32)
        result = client.flush()
        assert (result.sent, result.refused, result.kept) == (1, 1, 0)
    finally:
        service.stop()


@pytest.mark.slow  # services started and killed: seconds each
def test_two_replicas_on_one_postgresql_accept_a_counter_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    db = fresh_database(request, "postgresql", tmp_path)
    replicas = [start_fleet(db), start_fleet(db)]  # both migrate at once: one does the work
    try:
        client = device(replicas[0], tmp_path / "dev")
        for counter in range(1, 6):
            now_ms = int(time.time() * 1000)  # read once: two reads a tick apart would match
            bodies = [
                sealed(client.key, document(client, counter, created_at_ms=stamp))
                for stamp in (now_ms, now_ms - 1)
            ]  # two different reports claiming one counter, one to each replica
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(post, replicas, bodies))
            codes = sorted(a.status_code for a in answers)
            assert codes == [200, 409], [a.text for a in answers]
        detail = replicas[1].admin("GET", f"/v1/devices/{client.device_id}").json()
        assert (detail["reports"], detail["last_counter"]) == (5, 5)
    finally:
        for replica in replicas:
            replica.stop()


def test_a_client_that_trickles_its_body_is_cut_off(tmp_path: Path) -> None:
    service = start_fleet(str(tmp_path / "fleet.db"), 0, "--body-timeout", "1")
    try:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/reports HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"{" * 10
            )
            answer = ""  # no more bytes ever come from this client
            while "}" not in answer:
                chunk = sock.recv(4096).decode()
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '{"error":"body: not received within 1 s"}' in answer
        assert httpx.get(service.url + "/v1/health", timeout=30).status_code == 200
    finally:
        service.stop()
