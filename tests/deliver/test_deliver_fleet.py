"""The update agent with a fleet: enrollment, signed reports through the outbox, rollouts.

A real TUF repository on loopback, a real fleet service (SQLite) in its own process, real
agents running in-process cycles. Each test uses its own model name, so the rollouts of one
test never meet another's in the module's fleet service.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deliver_support import GOLDEN_X, agent_cli, agent_config, serve

from edgeinfer._rollout import rollout_bucket
from edgeinfer.bundle import GOLDEN_FILE, MANIFEST_FILE, Bundle, FileRef, Golden
from edgeinfer.deliver import Agent, AgentError, KeyStore, Publisher
from edgeinfer.fleet import rollout_docs
from edgeinfer.fleet.client import ClientConfig, FleetClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
from fleet_support import FleetProcess, free_port, start_fleet, token

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetProcess, Path]]:
    """A fleet service with a rollout key; the file holding its pinned public half."""
    where = tmp_path_factory.mktemp("fleet")
    fleet = start_fleet(str(where / "fleet.db"), 0, "--rollout-key", str(where / "rollout-key.pem"))
    try:
        public = httpx.get(fleet.url + "/v1/rollout-key", timeout=30).json()["public_key"]
        (where / "rollout.pub").write_text(public + "\n")
        yield fleet, where / "rollout.pub"
    finally:
        fleet.stop()


@dataclasses.dataclass
class Repo:
    """A TUF repository served on loopback, publishing bundles of one model."""

    tmp: Path
    model: str
    pub: Publisher
    url: str
    make_model: Callable[..., Path]
    server: Any

    def publish(self, version: int, rollout: float = 100.0, bad: bool = False) -> Any:
        out = self.tmp / f"{self.model}-{version}"
        onnx = self.make_model(self.tmp / f"{self.model}-{version}.onnx", seed=version)
        b = Bundle.create(onnx, out, name=self.model, version=version, golden_inputs=GOLDEN_X)
        if bad:  # consistent hashes, golden outputs the model does not reproduce
            golden = b.golden()
            assert golden is not None
            wrong = {k: v + 1.0 for k, v in golden.outputs.items()}
            Golden(golden.inputs, wrong, golden.atol, golden.rtol).save(out / GOLDEN_FILE)
            manifest = dataclasses.replace(b.manifest, golden=FileRef.of(out / GOLDEN_FILE))
            (out / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2))
        return self.pub.publish(out, rollout=rollout)

    def agent(self, state: Path, **kw: Any) -> Agent:
        return Agent(agent_config(self.server, state, self.tmp / "repo", **kw))


@pytest.fixture
def repo_of(tmp_path: Path, make_model: Any) -> Iterator[Callable[[str], Repo]]:
    servers: list[Any] = []

    def make(model: str) -> Repo:
        keys = KeyStore.init(tmp_path / "keys", None)
        pub = Publisher(tmp_path / "repo", keys)
        server = serve(tmp_path / "repo")
        servers.append(server)
        running = server.__enter__()
        return Repo(tmp_path, model, pub, running.url, make_model, running)

    yield make
    for server in servers:
        server.__exit__(None, None, None)


def ids(model: str, share: float) -> tuple[str, str, str]:
    """Two agent ids inside a rollout of ``share`` percent of ``model``, one outside."""
    inside = [f"dev-{i}" for i in range(200) if rollout_bucket(f"dev-{i}", model) < share]
    outside = [f"dev-{i}" for i in range(200) if rollout_bucket(f"dev-{i}", model) >= share]
    return inside[0], inside[1], outside[0]


def devices(fleet: FleetProcess) -> dict[str, dict[str, Any]]:
    answer = fleet.admin("GET", "/v1/devices")
    assert answer.status_code == 200, answer.text
    return {d["id"]: d for d in answer.json()}


def fleet_id(state: Path) -> str:
    enrolled = json.loads((state / "fleet" / "enrollment.json").read_text())
    return str(enrolled["device_id"])


def last_cycle(state: Path) -> dict[str, Any]:
    return dict(json.loads((state / "status.json").read_text())["last_cycle"])


def start_rollout(fleet: FleetProcess, published: Any, **plan: Any) -> None:
    body = {
        "model": published.model,
        "version": published.version,
        "target": {"sha256": published.sha256, "length": published.length},
        **plan,
    }
    answer = fleet.admin("POST", "/v1/rollouts", json=body)
    assert answer.status_code == 200, answer.text


def test_agents_enroll_and_their_reports_show_the_installed_version(
    service: tuple[FleetProcess, Path], repo_of: Callable[[str], Repo], tmp_path: Path
) -> None:
    fleet, _ = service
    repo = repo_of("plain")
    repo.publish(1)
    states = [tmp_path / "a", tmp_path / "b"]
    agents = [repo.agent(s, fleet_url=fleet.url, enroll_token=token(fleet)) for s in states]
    assert [a.run_once().result for a in agents] == ["updated", "updated"]
    listed = devices(fleet)
    for state in states:
        assert (state / "fleet" / "device_key.pem").is_file()
        mine = listed[fleet_id(state)]
        assert (mine["model"], mine["version"], mine["state"]) == ("plain", 1, "updated")

    repo.publish(2)
    assert agents[0].run_once().result == "updated"
    detail = fleet.admin("GET", f"/v1/devices/{fleet_id(states[0])}").json()
    assert (detail["version"], detail["reports"]) == (2, 2)
    assert detail["agent_device_id"] == agents[0].device_id  # one id for TUF and the fleet
    # the gate timed v2 against v1: its samples arrive as a latency sketch, not raw values
    latency = {s["metric"]: s for s in detail["fleet_latency"]}["latency_ms"]
    assert latency["n"] == 15 and latency["p50"] > 0
    assert devices(fleet)[fleet_id(states[1])]["version"] == 1


def test_a_fleet_that_is_down_or_refuses_never_fails_the_cycle(
    repo_of: Callable[[str], Repo], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    db = str(tmp_path / "own-fleet.db")
    fleet = start_fleet(db, port)
    repo = repo_of("offline")
    repo.publish(1)
    state = tmp_path / "dev"
    agent = repo.agent(state, fleet_url=fleet.url, enroll_token=token(fleet))
    assert agent.run_once().result == "updated"
    device = fleet_id(state)
    fleet.stop()

    repo.publish(2)
    with caplog.at_level(logging.WARNING, logger="edgeinfer"):
        down = agent.run_once()
    assert (down.result, down.to_version) == ("updated", 2)
    outbox = FleetClient(ClientConfig(fleet.url, state))
    assert len(outbox.pending()) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "fleet unreachable, 1 report(s) kept" in warned[0], warned

    fleet = start_fleet(db, port)  # back, same address and database
    try:
        assert agent.run_once().result == "up-to-date"
        assert outbox.pending() == []
        detail = fleet.admin("GET", f"/v1/devices/{device}").json()
        assert (detail["version"], detail["state"], detail["reports"]) == (2, "up-to-date", 3)
        assert [r["result"] for r in detail["recent_reports"]] == [
            "up-to-date",
            "updated",
            "updated",
        ]

        # a token the fleet refuses: one log line, and the device still updates
        refused = repo.agent(tmp_path / "other", fleet_url=fleet.url, enroll_token="not-a-token")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgeinfer"):
            assert refused.run_once().result == "updated"
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "fleet report kept in the outbox" in warned[0], warned
    finally:
        fleet.stop()


def test_a_staged_rollout_admits_its_bucket_and_a_halted_one_holds_everyone(
    service: tuple[FleetProcess, Path], repo_of: Callable[[str], Repo], tmp_path: Path
) -> None:
    fleet, key = service
    repo = repo_of("paced")
    repo.publish(1)
    in1, in2, out = ids("paced", 30)
    agents = {
        name: repo.agent(
            tmp_path / name,
            device_id=name,
            fleet_url=fleet.url,
            enroll_token=token(fleet),
            rollout_key=key,
        )
        for name in (in1, in2, out)
    }
    assert {a.run_once().result for a in agents.values()} == {"updated"}

    # v2 is held by the release keys (0 %): the fleet paces it, 30 % at first
    v2 = repo.publish(2, rollout=0)
    assert agents[in1].run_once().result == "held"
    assert "held (rollout 0%)" in (last_cycle(tmp_path / in1)["reason"] or "")
    start_rollout(fleet, v2, stages=[30, 100], soak_s=3600)
    results = {name: a.run_once() for name, a in agents.items()}
    assert (results[in1].result, results[in2].result, results[out].result) == (
        "updated",
        "updated",
        "held",
    )
    assert "does not reach this device" in (results[out].reason or "")
    assert last_cycle(tmp_path / out)["result"] == "held"
    status = json.loads((tmp_path / out / "status.json").read_text())
    assert status["active"]["version"] == 1 and status["bad_versions"] == []
    followed = json.loads((tmp_path / out / "rollout_followed.json").read_text())
    assert followed["paced"] > 0
    assert devices(fleet)[fleet_id(tmp_path / out)]["state"] == "held"
    assert fleet.admin("POST", "/v1/rollouts/paced/abort").status_code == 200

    # v3 fails its health gate on the first device of its first stage: the rollout halts
    v3 = repo.publish(3, rollout=0, bad=True)
    start_rollout(fleet, v3, stages=[30, 100], min_devices=1, max_failure=0.1)
    assert agents[in1].run_once().result == "rolled-back"
    deadline = time.monotonic() + 60
    while fleet.admin("GET", "/v1/rollouts/paced").json()["state"] != "halted":
        assert time.monotonic() < deadline, "the rollout did not halt"
        time.sleep(0.1)
    for name, version in ((in2, 2), (out, 1)):
        held = agents[name].run_once()
        assert held.result == "held", held
        assert "the rollout of paced 3 is halted" in (held.reason or "")
        status = json.loads((tmp_path / name / "status.json").read_text())
        assert status["active"]["version"] == version and status["bad_versions"] == []


def test_a_forged_rollout_document_is_ignored_for_tufs_plan(
    service: tuple[FleetProcess, Path], repo_of: Callable[[str], Repo], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    fleet, key = service
    repo = repo_of("forged")
    repo.publish(1)
    _, _, out = ids("forged", 30)
    # the device pins another key: every document the fleet serves fails to verify
    other = tmp_path / "other.pub"
    other.write_text(rollout_docs.public_key_b64(Ed25519PrivateKey.generate()) + "\n")
    pinned = {
        name: repo.agent(
            tmp_path / name,
            device_id=out,
            fleet_url=fleet.url,
            enroll_token=token(fleet),
            rollout_key=pin,
        )
        for name, pin in (("true-key", key), ("other-key", other), ("replayed", key))
    }
    assert {a.run_once().result for a in pinned.values()} == {"updated"}
    v2 = repo.publish(2)  # TUF's plan: every device
    start_rollout(fleet, v2, stages=[30, 100], soak_s=3600)
    assert pinned["true-key"].run_once().result == "held"
    followed = json.loads((tmp_path / "true-key" / "rollout_followed.json").read_text())
    forged = pinned["other-key"].run_once()
    assert (forged.result, forged.to_version) == ("updated", 2)
    assert not (tmp_path / "other-key" / "rollout_followed.json").exists()
    # a device that followed a newer document takes the fleet's one as a replay: TUF's plan
    newer = {"forged": followed["forged"] + 1}
    (tmp_path / "replayed" / "rollout_followed.json").write_text(json.dumps(newer))
    replayed = pinned["replayed"].run_once()
    assert (replayed.result, replayed.to_version) == ("updated", 2)


def test_bad_fleet_options_are_one_line_errors(
    service: tuple[FleetProcess, Path], repo_of: Callable[[str], Repo], tmp_path: Path
) -> None:
    fleet, key = service
    repo = repo_of("options")
    for kw, fragment in (
        ({"rollout_key": key}, "--rollout-key needs --fleet"),
        ({"fleet_url": fleet.url}, "pass an enrollment token"),
        ({"fleet_url": "ftp://x"}, "expected http:// or https://"),
        (
            {"fleet_url": fleet.url, "enroll_token": "t" * 10, "rollout_key": tmp_path / "no"},
            "rollout key",
        ),
    ):
        with pytest.raises(AgentError, match=fragment) as caught:
            repo.agent(tmp_path / "dev", **kw)
        assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_the_agent_command_enrolls_from_the_environment_and_refuses_bad_options(
    service: tuple[FleetProcess, Path], repo_of: Callable[[str], Repo], tmp_path: Path
) -> None:
    fleet, key = service
    repo = repo_of("command")
    repo.publish(1)
    root = tmp_path / "repo" / "metadata" / "1.root.json"
    fleet_opts = ["--fleet", fleet.url, "--rollout-key", str(key)]
    env = {"EDGEINFER_ENROLL_TOKEN": token(fleet)}
    out = agent_cli(repo.url, tmp_path / "dev", root, *fleet_opts, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"] == "updated"
    assert devices(fleet)[fleet_id(tmp_path / "dev")]["version"] == 1

    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for extra, message in (
        (["--rollout-key", str(key)], "--rollout-key needs --fleet"),
        (["--fleet", fleet.url], "pass an enrollment token"),
        (["--fleet", fleet.url, "--enroll-token-file", str(empty)], "no token in it"),
    ):
        refused = agent_cli(repo.url, tmp_path / "new", root, *extra)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow  # a fleet service started twice, three agents, three releases
def test_a_fleet_down_for_the_whole_rollout_leaves_devices_on_tufs_plan(
    repo_of: Callable[[str], Repo], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, where = free_port(), tmp_path / "fleet"
    where.mkdir()
    options = ("--rollout-key", str(where / "rollout-key.pem"))
    fleet = start_fleet(str(where / "fleet.db"), port, *options)
    try:
        public = httpx.get(fleet.url + "/v1/rollout-key", timeout=30).json()["public_key"]
        (tmp_path / "rollout.pub").write_text(public + "\n")
        repo = repo_of("unpaced")
        repo.publish(1)
        inside, _, out = ids("unpaced", 50)
        agents = {
            name: repo.agent(
                tmp_path / name,
                device_id=name,
                fleet_url=fleet.url,
                enroll_token=token(fleet),
                rollout_key=tmp_path / "rollout.pub",
            )
            for name in (inside, out)
        }
        assert {a.run_once().result for a in agents.values()} == {"updated"}
    finally:
        fleet.stop()

    # the fleet is gone before the release and stays gone: no document paces anything,
    # the devices follow what the release keys published (v2 to half the fleet, then v3)
    with caplog.at_level(logging.WARNING, logger="edgeinfer"):
        repo.publish(2, rollout=50)
        first = {name: a.run_once() for name, a in agents.items()}
        repo.publish(3)
        second = {name: a.run_once() for name, a in agents.items()}
    assert (first[inside].result, first[inside].to_version) == ("updated", 2)
    assert first[out].result != "updated"  # not in TUF's 50 %
    assert {(r.result, r.to_version) for r in second.values()} == {("updated", 3)}
    for name in agents:
        status = json.loads((tmp_path / name / "status.json").read_text())
        assert status["active"]["version"] == 3 and status["bad_versions"] == []
        outbox = FleetClient(ClientConfig(f"http://127.0.0.1:{port}", tmp_path / name))
        assert len(outbox.pending()) == 2  # both cycles' reports wait on disk
    assert any("fleet unreachable" in r.getMessage() for r in caplog.records)

    fleet = start_fleet(str(where / "fleet.db"), port, *options)  # back, same address
    try:
        assert {a.run_once().result for a in agents.values()} == {"up-to-date"}
        listed = devices(fleet)
        for name in agents:
            assert FleetClient(ClientConfig(fleet.url, tmp_path / name)).pending() == []
            mine = fleet.admin("GET", f"/v1/devices/{fleet_id(tmp_path / name)}").json()
            assert (mine["version"], mine["reports"]) == (3, 4)  # 1 before, 2 kept, 1 now
            assert listed[fleet_id(tmp_path / name)]["state"] == "up-to-date"
        history = fleet.admin("GET", f"/v1/devices/{fleet_id(tmp_path / inside)}").json()
        assert [r["result"] for r in history["recent_reports"]][:3] == [
            "up-to-date",
            "updated",
            "updated",
        ]
    finally:
        fleet.stop()
