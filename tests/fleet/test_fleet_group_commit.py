"""Group commit: reports written together in one transaction still get one answer each.

Many threads hand the real ingest path (real Ed25519 signatures, the real sketch sandbox,
real SQLite and PostgreSQL) reports that race each other: the same report twice, another
report with the same counter (a replay), and the next counter. Whatever order the batches
take, every answer must agree with what the database holds afterwards.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from edgeinfer.fleet import ingest, inventory
from edgeinfer.fleet import reports as wire
from edgeinfer.fleet import sketches as kll
from edgeinfer.fleet.errors import Conflict
from edgeinfer.fleet.sketches import Sandbox
from edgeinfer.fleet.store import Device, Report, SketchRow, StoreConfig, open_store

pytestmark = pytest.mark.timeout(120)
SHA = "ab" * 32
HARDWARE = {"hardware_class": "test-x86_64", "machine": "x86_64", "system": "linux", "cpus": 2}


def _report(key: Ed25519PrivateKey, device_id: str, counter: int, result: str) -> bytes:
    document: dict[str, Any] = {
        "device_id": device_id,
        "counter": counter,
        "bundle_sha256": SHA,
        "created_at_ms": int(time.time() * 1000),
        "payload": {
            "agent_version": "0.1.0",
            "active": {"slot": "a", "name": "digits", "version": 2, "sha256": SHA},
            "cycle": {"result": result},
            "hardware": HARDWARE,
            "sketches": [{"metric": "latency_ms", "kll": kll.encode(kll.make([1.0, 2.0, 3.0]))}],
        },
    }
    return wire.seal(key, "report", document)


def test_racing_reports_get_the_answers_the_database_agrees_with(database: str) -> None:
    store = open_store(StoreConfig(database))
    sandbox = Sandbox()
    try:
        token = inventory.create_token(store, 8)["token"]
        bodies: list[tuple[str, bytes]] = []
        for _ in range(8):
            key = Ed25519PrivateKey.generate()
            raw = key.public_key().public_bytes_raw()
            enrollment = {
                "public_key": wire.b64encode(raw),
                "token": token,
                "created_at_ms": int(time.time() * 1000),
                "hardware": HARDWARE,
            }
            device_id, _ = ingest.enroll(
                store, wire.seal(key, "enrollment", enrollment), ingest.Limits()
            )
            first = _report(key, device_id, 1, "updated")
            bodies += [
                (device_id, first),
                (device_id, first),  # its answer was lost: sent again
                (device_id, _report(key, device_id, 1, "failed")),  # same counter, other text
                (device_id, _report(key, device_id, 2, "up-to-date")),
            ]

        def send(body: bytes) -> ingest.Accepted | Conflict:
            try:
                return ingest.accept_report(store, body, ingest.Limits(), sandbox)
            except Conflict as exc:
                return exc

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, [b for _, b in bodies]))

        with store.session() as session:
            stored = {
                (r.device_id, r.counter): r.signed_text for r in session.scalars(select(Report))
            }
            counters = {d.id: d.last_counter for d in session.scalars(select(Device))}
            sketch_n = session.scalar(select(SketchRow.n))
        accepted = [
            (device_id, a, body)
            for (device_id, body), a in zip(bodies, answers, strict=True)
            if isinstance(a, ingest.Accepted)
        ]
        fresh = [(d, a, b) for d, a, b in accepted if not a.duplicate]
        # each stored report was answered 200 exactly once as new, and nothing else was
        assert sorted((d, a.counter) for d, a, _ in fresh) == sorted(stored)
        for device_id, answer, body in accepted:  # a duplicate is the stored text again
            text, _, _ = wire.open_envelope(body, "report")
            assert stored[(device_id, answer.counter)] == text.decode()
        for device_id in counters:
            mine = [a.counter for d, a, _ in fresh if d == device_id]
            assert mine and counters[device_id] == max(mine)
        for answer in answers:
            if isinstance(answer, Conflict):  # the device learns where to resume
                assert answer.last_counter is not None and answer.last_counter >= 1
        assert sketch_n == 3 * len(fresh)  # each new report's sketch merged once
    finally:
        sandbox.close()
        store.close()
