"""The device side without a fleet: its key, its counter, its bounded outbox."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fleet_support import free_port, status

from edgeinfer.errors import InputError
from edgeinfer.fleet import reports as wire
from edgeinfer.fleet.client import ClientConfig, FleetClient, report_cycle
from edgeinfer.fleet.errors import BadReport

pytestmark = pytest.mark.timeout(60)


def offline(state_dir: Path, **kw: object) -> FleetClient:
    """A client of a fleet that is not there (a closed loopback port)."""
    url = f"http://127.0.0.1:{free_port()}"
    return FleetClient(ClientConfig(url, state_dir, enroll_token="et_whatever", **kw))  # type: ignore[arg-type]


def test_the_key_is_made_once_owner_only_and_names_the_device(tmp_path: Path) -> None:
    client = offline(tmp_path)
    device_id = client.device_id
    key_file = tmp_path / "fleet" / "device_key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not list((tmp_path / "fleet").glob(".device_key.pem.*"))  # no temporary left
    assert offline(tmp_path).device_id == device_id
    assert offline(tmp_path / "other").device_id != device_id
    assert device_id == wire.device_id_for(client.public_key)


def test_reports_wait_in_a_bounded_outbox_with_a_counter_that_never_repeats(
    tmp_path: Path,
) -> None:
    client = offline(tmp_path, max_outbox=3)
    kept = [report_cycle(client, status(2), latency_ms=[1.0]).kept for _ in range(5)]
    assert kept == [1, 2, 3, 3, 3]
    assert [int(p.stem) for p in client.pending()] == [3, 4, 5]  # the oldest went first
    # another process (the agent restarted) goes on from the stored counter
    again = offline(tmp_path, max_outbox=3)
    assert again.queue(json.loads(_payload(client.pending()[-1])), "ab" * 32) == 6
    envelope = json.loads(client.pending()[-1].read_bytes())
    text = envelope["report"].encode()
    wire.verify(client.key.public_key(), "report", text, wire.b64decode(envelope["signature"], "s"))
    assert json.loads(text)["counter"] == 6


def _payload(path: Path) -> str:
    report = json.loads(json.loads(path.read_bytes())["report"])
    return json.dumps(report["payload"])


def test_a_device_never_enrolled_needs_a_token(tmp_path: Path) -> None:
    client = FleetClient(ClientConfig(f"http://127.0.0.1:{free_port()}", tmp_path))
    client.queue({"agent_version": "1", "hardware": {"hardware_class": "x"}}, None)
    with pytest.raises(InputError, match="--enroll-token"):
        client.flush()


def test_a_payload_of_the_wrong_shape_fails_on_the_device(tmp_path: Path) -> None:
    client = offline(tmp_path)
    with pytest.raises(BadReport, match="report.payload.hardware"):
        client.queue({"agent_version": "1"}, None)
    assert client.pending() == []


@pytest.mark.parametrize("url", ["ftp://fleet", "fleet:8700", ""])
def test_a_fleet_url_must_be_http(tmp_path: Path, url: str) -> None:
    with pytest.raises(InputError, match="expected http:// or https://"):
        FleetClient(ClientConfig(url, tmp_path))


def test_a_status_without_an_installed_model_reports_no_bundle(tmp_path: Path) -> None:
    client = offline(tmp_path)
    report_cycle(client, {**status(), "active": None}, latency_ms=None)
    report = json.loads(json.loads(client.pending()[0].read_bytes())["report"])
    assert report["bundle_sha256"] is None and "active" not in report["payload"]
    assert report["payload"]["cycle"]["result"] == "updated"
