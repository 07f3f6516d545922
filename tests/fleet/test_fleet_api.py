"""The fleet service on SQLite and PostgreSQL: enrollment, signed reports and every refusal.

One real service process per backend for the module; each test makes its own devices.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import (
    ADMIN,
    FleetProcess,
    device,
    document,
    post,
    refused,
    sealed,
    status,
    token,
)

from edgeinfer.fleet import reports as wire
from edgeinfer.fleet import sketches
from edgeinfer.fleet.client import ClientConfig, FleetClient, report_cycle
from edgeinfer.fleet.errors import Forbidden, Unauthenticated

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shared(fleet: FleetProcess, tmp_path_factory: pytest.TempPathFactory) -> FleetClient:
    """An enrolled device for tests whose reports are all refused (its counter never moves)."""
    return device(fleet, tmp_path_factory.mktemp("shared"))


def test_a_device_enrolls_reports_and_shows_in_the_inventory(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    client = device(fleet, tmp_path / "dev")
    first = report_cycle(client, status(2), latency_ms=[4.0] * 90 + [9.0] * 10)
    second = report_cycle(
        client, status(2, "up-to-date"), latency_ms=[5.0] * 100, drift={"input:x": [0.5] * 10}
    )
    assert (first.sent, first.kept, second.sent, second.kept) == (1, 0, 1, 0)

    listed = {d["id"]: d for d in fleet.admin("GET", "/v1/devices").json()}
    mine = listed[client.device_id]
    assert (mine["model"], mine["version"], mine["state"]) == ("digits", 2, "up-to-date")
    assert mine["last_report_at"].endswith("Z")

    detail = fleet.admin("GET", f"/v1/devices/{client.device_id}").json()
    assert detail["reports"] == 2 and detail["last_counter"] == 2
    assert [r["counter"] for r in detail["recent_reports"]] == [2, 1]
    assert detail["bundle_sha256"] == "ab" * 32
    metrics = {s["metric"]: s for s in detail["fleet_latency"]}
    assert metrics["input:x"]["n"] == 10
    # merged over the devices of this class and version: this one's 200 values at least
    assert metrics["latency_ms"]["n"] >= 200
    assert 4.0 <= metrics["latency_ms"]["p50"] <= 5.0


def test_the_same_key_enrolls_once_and_a_used_up_token_is_refused(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    one_use = token(fleet, uses=1)
    first = FleetClient(ClientConfig(fleet.url, tmp_path / "a", enroll_token=one_use))
    device_id = first.enroll()
    (tmp_path / "a" / "fleet" / "enrollment.json").unlink()  # the answer was lost
    assert first.enroll() == device_id  # same key, same id, no second use of the token
    second = FleetClient(ClientConfig(fleet.url, tmp_path / "b", enroll_token=one_use))
    with pytest.raises(Forbidden, match="used up"):
        second.enroll()
    stranger = FleetClient(ClientConfig(fleet.url, tmp_path / "c", enroll_token="et_not-a-token"))
    with pytest.raises(Unauthenticated, match="unknown enrollment token"):
        stranger.enroll()


def test_an_enrollment_must_be_signed_by_the_key_it_enrolls(fleet: FleetProcess) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes_raw()
    doc = {
        "public_key": wire.b64encode(raw),
        "token": token(fleet),
        "created_at_ms": int(time.time() * 1000),
        "hardware": {"hardware_class": "x"},
    }
    answer = post(fleet, wire.seal(key, "enrollment", doc), "/v1/enroll")
    refused(answer, 401, "signature does not verify")


def test_a_forged_signature_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    client = device(fleet, tmp_path / "dev")
    forger = Ed25519PrivateKey.generate()
    refused(post(fleet, sealed(forger, document(client, 1))), 401, "signature does not verify")
    # the signed text changed after signing
    body = json.loads(sealed(client.key, document(client, 1)))
    body["report"] = body["report"].replace('"counter":1', '"counter":2')
    refused(post(fleet, json.dumps(body).encode()), 401, "signature does not verify")


def test_an_unknown_key_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    stranger = FleetClient(ClientConfig(fleet.url, tmp_path / "never-enrolled"))
    answer = post(fleet, sealed(stranger.key, document(stranger, 1)))
    refused(answer, 401, "unknown device")


def test_a_replayed_counter_is_refused_and_a_resent_report_is_taken_once(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    client = device(fleet, tmp_path / "dev")
    original = sealed(client.key, document(client, 1))
    assert post(fleet, original).json()["duplicate"] is False
    again = post(fleet, original)  # the same bytes: its first answer was lost
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = sealed(
        client.key,
        document(
            client,
            1,
            bundle_sha256=None,
            payload={"agent_version": "0.1.0", "hardware": {"hardware_class": "x"}},
        ),
    )
    refused(post(fleet, other), 409, "counter 1 was already used")
    detail = fleet.admin("GET", f"/v1/devices/{client.device_id}").json()
    assert detail["reports"] == 1


def test_an_out_of_order_counter_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    client = device(fleet, tmp_path / "dev")
    assert post(fleet, sealed(client.key, document(client, 5))).status_code == 200
    refused(post(fleet, sealed(client.key, document(client, 3))), 409, "out of order")
    assert post(fleet, sealed(client.key, document(client, 6))).status_code == 200


def test_a_device_that_lost_its_counter_resumes_above_the_fleets(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    client = device(fleet, tmp_path / "dev")
    for _ in range(3):
        assert report_cycle(client, status(2)).sent == 1
    (tmp_path / "dev" / "fleet" / "counter").unlink()  # e.g. the state restored from a backup
    result = report_cycle(client, status(3))  # counter 1 again: refused, signed again as 4
    assert (result.sent, result.refused, result.kept) == (1, 0, 0)
    detail = fleet.admin("GET", f"/v1/devices/{client.device_id}").json()
    assert (detail["reports"], detail["last_counter"], detail["version"]) == (4, 4, 3)
    refusal = post(fleet, sealed(client.key, document(client, 2)))
    refused(refusal, 409, "already used")
    assert refusal.json()["last_counter"] == 4


@pytest.mark.parametrize(
    ("make_body", "fragment"),
    [
        (lambda good: good[: len(good) // 2], "malformed JSON"),
        (lambda good: good[:-1], "malformed JSON"),
        (lambda good: b"\xff\xfe" + good, "not UTF-8"),
        (lambda good: b"[1, 2]", "expected {"),
        (lambda good: b'{"report": "{}"}', "expected {"),
        (lambda good: b'{"report": "{}", "signature": "***"}', "not valid base64"),
        (lambda good: b'{"report": "{}", "signature": "AAAA"}', "expected 64 Ed25519 bytes"),
        (lambda good: b"NaN", "malformed JSON"),
        (lambda good: b"[" * 100_000, "body:"),
    ],
    ids=[
        "truncated",
        "last-byte-cut",
        "not-utf8",
        "array",
        "no-signature",
        "bad-base64",
        "short-signature",
        "nan",
        "deeply-nested",
    ],
)
def test_truncated_and_malformed_bodies_are_refused(
    fleet: FleetProcess, shared: FleetClient, make_body, fragment: str
) -> None:
    client = shared
    good = sealed(client.key, document(client, 1))
    refused(post(fleet, make_body(good)), 400, fragment)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"counter": 0}, "report.counter"),
        ({"counter": "1"}, "report.counter"),
        ({"bundle_sha256": "xyz"}, "report.bundle_sha256"),
        ({"extra": 1}, "report.extra"),
        ({"payload": {"agent_version": "1"}}, "report.payload.hardware"),
        ({"bundle_sha256": "cd" * 32}, "differs from the active slot"),
    ],
    ids=["zero-counter", "string-counter", "bad-sha", "extra-field", "no-hardware", "sha-mismatch"],
)
def test_signed_reports_of_the_wrong_shape_are_refused(
    fleet: FleetProcess, shared: FleetClient, changes: dict[str, object], fragment: str
) -> None:
    client = shared
    doc = {**document(client, 1), **changes}
    refused(post(fleet, sealed(client.key, doc)), 400, fragment)


def test_a_report_that_is_not_canonical_json_is_refused(
    fleet: FleetProcess, shared: FleetClient
) -> None:
    client = shared
    text = json.dumps(document(client, 1), indent=1)  # one document, another spelling
    signature = client.key.sign(wire.REPORT_CONTEXT + text.encode())
    body = json.dumps({"report": text, "signature": wire.b64encode(signature)}).encode()
    refused(post(fleet, body), 400, "not canonical JSON")


def test_an_oversized_body_is_refused_before_it_is_read(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    big = b"x" * (300 * 1024)
    refused(post(fleet, big), 413, "more than the 262144")

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        for _ in range(40):
            yield b"y" * 8192

    answer = httpx.post(fleet.url + "/v1/reports", content=chunks(), timeout=30)
    refused(answer, 413, "more than the 262144")
    refused(post(fleet, b"z" * 20_000, "/v1/enroll"), 413, "16384")


def test_a_clock_skewed_report_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    client = device(fleet, tmp_path / "dev")
    ahead = int((time.time() + 3600) * 1000)
    refused(
        post(fleet, sealed(client.key, document(client, 1, created_at_ms=ahead))),
        400,
        "ahead of the fleet's clock",
    )
    stale = int((time.time() - 30 * 86400) * 1000)
    refused(
        post(fleet, sealed(client.key, document(client, 1, created_at_ms=stale))),
        400,
        "older than",
    )
    assert post(fleet, sealed(client.key, document(client, 1))).status_code == 200


def test_a_revoked_device_is_refused_and_cannot_enroll_again(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    client = device(fleet, tmp_path / "dev", uses=5)
    assert post(fleet, sealed(client.key, document(client, 1))).status_code == 200
    answer = fleet.admin("POST", f"/v1/devices/{client.device_id}/revoke")
    assert answer.status_code == 200 and answer.json()["revoked_at"].endswith("Z")
    refused(post(fleet, sealed(client.key, document(client, 2))), 403, "is revoked")
    (tmp_path / "dev" / "fleet" / "enrollment.json").unlink()
    with pytest.raises(Forbidden, match="revoked"):
        client.enroll()
    listed = {d["id"]: d for d in fleet.admin("GET", "/v1/devices").json()}
    assert listed[client.device_id]["state"] == "revoked"


def test_devices_are_listed_a_page_at_a_time_after_the_last_id(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    ids = sorted(device(fleet, tmp_path / f"dev{i}").device_id for i in range(5))
    walked: list[str] = []
    query = "/v1/devices?limit=2"
    while True:
        page = fleet.admin("GET", query).json()
        walked += [d["id"] for d in page]
        if len(page) < 2:
            break
        query = f"/v1/devices?limit=2&after={page[-1]['id']}"
    everyone = [d["id"] for d in fleet.admin("GET", "/v1/devices?limit=100000").json()]
    assert walked == everyone == sorted(everyone)  # each once, in id order
    assert set(ids) <= set(walked)  # the fleet is shared with the module's other tests
    by_offset = fleet.admin("GET", "/v1/devices?limit=2&offset=2").json()
    assert [d["id"] for d in by_offset] == everyone[2:4]


def test_a_sketch_that_is_not_kll_is_refused(fleet: FleetProcess, tmp_path: Path) -> None:
    client = device(fleet, tmp_path / "dev")
    good = bytes(sketches.make([float(v) for v in range(1000)]).serialize())
    crashing = bytearray(good)
    crashing[29] = 30  # a level offset far past the items: datasketches reads wild memory
    bads = [b"not a sketch at all", good[:24], good[:-16], bytes(crashing)]
    for i, bad in enumerate(bads, start=1):
        doc = document(client, i)
        doc["payload"]["sketches"] = [
            {"metric": "latency_ms", "kll": base64.b64encode(bad).decode()}
        ]
        refused(post(fleet, sealed(client.key, doc)), 400, "not a KLL doubles sketch")
    assert "crashed" in post(fleet, sealed(client.key, doc)).json()["error"]
    # the service lives on: the parser's child was replaced
    assert fleet.proc.poll() is None
    doc = document(client, 5)
    doc["payload"]["sketches"] = [{"metric": "latency_ms", "kll": wire.b64encode(good)}]
    assert post(fleet, sealed(client.key, doc)).status_code == 200


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/v1/devices"),
        ("GET", "/v1/devices/d-00000000000000000000"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/devices/d-00000000000000000000/revoke"),
    ],
)
def test_operator_routes_need_the_admin_token(fleet: FleetProcess, method: str, route: str) -> None:
    refused(httpx.request(method, fleet.url + route, timeout=30), 401, "admin token")
    wrong = {"authorization": "Bearer not-the-token"}
    refused(httpx.request(method, fleet.url + route, headers=wrong, timeout=30), 401, "invalid")


def test_operator_mistakes_are_4xx_with_a_reason(fleet: FleetProcess) -> None:
    refused(fleet.admin("GET", "/v1/devices/d-00000000000000000000"), 404, "no device")
    refused(fleet.admin("POST", "/v1/tokens", json={"uses": 0}), 400, "uses: expected")
    refused(fleet.admin("POST", "/v1/tokens", json={"uses": True}), 400, "uses: expected")
    refused(fleet.admin("POST", "/v1/tokens", content=b"{"), 400, "malformed JSON")
    refused(fleet.admin("GET", "/v1/devices?limit=x"), 400, "?limit=x")
    refused(fleet.admin("GET", "/v1/devices?after=" + "d" * 200), 400, "?after: expected")
    refused(fleet.admin("GET", "/v1/nothing"), 404, "/v1/nothing")
    refused(fleet.admin("DELETE", "/v1/devices"), 405, "DELETE /v1/devices")
    assert ADMIN not in fleet.admin("GET", "/v1/nothing").text
