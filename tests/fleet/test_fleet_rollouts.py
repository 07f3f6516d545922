"""Staged rollouts: the rules, the signed document and RolloutGate, the service end to end.

End to end, simulated devices are real fleet clients (their own Ed25519 keys, signed
reports over HTTP on loopback) whose agent ids are chosen so that a known number of them
falls in the first stage; each asks RolloutGate, with the document fetched from the
service, whether it may install the version, and reports what its cycle did.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import ADMIN, FleetProcess, fresh_database, start_fleet, token
from typer.testing import CliRunner

from edgeinfer.cli.fleet_rollout import parse_duration, parse_share, parse_stages
from edgeinfer.cli.main import build_app, main
from edgeinfer.deliver.targets import rollout_bucket
from edgeinfer.errors import InputError
from edgeinfer.fleet import rollout_docs, rollout_service
from edgeinfer.fleet.client import ClientConfig, FleetClient, RolloutGate, report_cycle
from edgeinfer.fleet.errors import BadReport, BadRolloutDocument
from edgeinfer.fleet.rollouts import Plan, StageFigures, check_plan, decide
from edgeinfer.fleet.store import Rollout, RolloutEvent, StoreConfig, open_store

pytestmark = pytest.mark.timeout(180)
runner = CliRunner()
SHA2, SHA3 = "c2" * 32, "c3" * 32
SHAS = {1: "c1" * 32, 2: SHA2, 3: SHA3}
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


# the rules ------------------------------------------------------------------------------
def rollout(**kw: Any) -> Rollout:
    fields: dict[str, Any] = {
        "model": "digits",
        "version": 3,
        "stages": [5, 25, 100],
        "stage": 0,
        "state": "running",
        "max_failure": 0.1,
        "min_devices": 20,
        "max_latency_regression": 0.2,
        "soak_s": 600.0,
        "stage_started_at": NOW - dt.timedelta(seconds=601),
        "previous_version": 2,
    }
    fields.update(kw)
    return Rollout(**fields)


@pytest.mark.parametrize(
    ("figures", "kw", "action", "rule"),
    [
        # 3 of 20 failed: 15 % > 10 % with min-devices reporting
        (StageFigures(20, 17, 3), {}, "halt", "failure-share"),
        # the same share with 19 reporting: too few to halt, too few ok to promote
        (StageFigures(20, 16, 3), {}, "hold", None),
        # exactly at the threshold is not above it; soaked and enough ok: promote
        (StageFigures(20, 18, 2), {}, "promote", None),
        # not soaked yet
        (StageFigures(20, 20, 0), {"stage_started_at": NOW}, "hold", None),
        # the last stage completes
        (StageFigures(20, 20, 0), {"stage": 2}, "complete", None),
        # a stage with no device of the model promotes once soaked
        (StageFigures(0, 0, 0), {}, "promote", None),
        # paused: nothing happens whatever the figures
        (StageFigures(20, 0, 20), {"state": "paused"}, "hold", None),
        # 30 % slower p95 on one hardware class, 20 % allowed
        (
            StageFigures(
                20, 20, 0, {"arm": {"p95": 13.0, "previous_p95": 10.0, "regression": 0.3}}
            ),
            {},
            "halt",
            "latency-p95",
        ),
        # the same regression without a latency rule promotes
        (
            StageFigures(
                20, 20, 0, {"arm": {"p95": 13.0, "previous_p95": 10.0, "regression": 0.3}}
            ),
            {"max_latency_regression": None},
            "promote",
            None,
        ),
    ],
)
def test_decide(figures: StageFigures, kw: dict[str, Any], action: str, rule: str | None) -> None:
    decision = decide(rollout(**kw), figures, NOW)
    assert (decision.action, decision.rule) == (action, rule)
    if action == "halt":
        assert decision.detail["threshold"] in (0.1, 0.2)
        assert decision.detail["reporting"] == figures.reporting


@pytest.mark.parametrize(
    ("plan", "fragment"),
    [
        (Plan((5, 25), 0.1, 20), "last stage must be 100"),
        (Plan((25, 5, 100), 0.1, 20), "increasing percents"),
        (Plan((0, 100), 0.1, 20), "increasing percents"),
        (Plan((100,), 1.0, 20), "max_failure"),
        (Plan((100,), 0.1, 0), "min_devices"),
    ],
)
def test_bad_plans_are_refused_in_one_line(plan: Plan, fragment: str) -> None:
    with pytest.raises(BadReport, match=fragment):
        check_plan(plan)


def test_cli_parsers() -> None:
    assert parse_share("10%", "--max-failure") == pytest.approx(0.1)
    assert parse_duration("10m", "--soak") == 600 and parse_duration("90", "--soak") == 90
    assert parse_stages("5,25,100") == [5, 25, 100]
    for bad in ("5,100,25", "5,25", "x"):
        with pytest.raises(InputError, match="--stages"):
            parse_stages(bad)
    with pytest.raises(InputError, match="percentage"):
        parse_share("ten", "--max-failure")
    with pytest.raises(InputError, match="duration"):
        parse_duration("soon", "--soak")


# the document and RolloutGate -----------------------------------------------------------
def doc(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "edgeinfer-rollout",
        "model": "digits",
        "version": 3,
        "target": {"sha256": SHA3, "length": 1000},
        "state": "running",
        "stage": 0,
        "stages": [50, 100],
        "share_bp": 5000,
        "selection": rollout_docs.SELECTION,
        "doc_version": 1000002,
        "issued_at_ms": int(time.time() * 1000),
        "expires_at_ms": int(time.time() * 1000) + 60_000,
    }
    body.update(kw)
    return body


def agent_ids(model: str, share: float, inside: int, outside: int) -> list[str]:
    """Agent ids of which the first ``inside`` fall in a ``share`` percent stage."""
    ins = [f"dev-{i}" for i in range(5000) if rollout_bucket(f"dev-{i}", model) < share]
    outs = [f"dev-{i}" for i in range(5000) if rollout_bucket(f"dev-{i}", model) >= share]
    return ins[:inside] + outs[:outside]


def test_rollout_gate_verifies_and_narrows() -> None:
    key = Ed25519PrivateKey.generate()
    inside, outside = agent_ids("digits", 50, 1, 1)
    gate_in = RolloutGate(key.public_key(), inside)
    gate_out = RolloutGate(key.public_key(), outside)
    target = {"model": "digits", "version": 3, "sha256": SHA3, "length": 1000}
    document = gate_in.verify(rollout_docs.seal_document(key, doc()), "digits")

    assert gate_in.allows(document, **target, tuf_rollout=0).allowed  # held: the fleet paces
    assert not gate_out.allows(document, **target, tuf_rollout=0).allowed
    # a release not held: TUF's share is a ceiling the document cannot raise
    assert not gate_in.allows(document, **target, tuf_rollout=0.01).allowed
    # another bundle under the same version: refused
    other = {**target, "sha256": "ee" * 32}
    assert "another bundle" in gate_in.allows(document, **other, tuf_rollout=0).reason
    # halted: nobody
    halted = gate_in.verify(rollout_docs.seal_document(key, doc(state="halted")), "digits")
    assert not gate_in.allows(halted, **target, tuf_rollout=0).allowed
    # a version the document does not name, or no document: TUF's plan
    v4 = {**target, "version": 4}
    assert not gate_in.allows(document, **v4, tuf_rollout=0).allowed
    assert gate_in.allows(document, **v4, tuf_rollout=100).allowed
    assert "held" in gate_in.allows(None, **target, tuf_rollout=0).reason


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda k, o: rollout_docs.seal_document(o, doc()), "does not verify"),
        (lambda k, o: rollout_docs.seal_document(k, doc(expires_at_ms=1000)), "expired"),
        (lambda k, o: rollout_docs.seal_document(k, doc(model="other")), "expected 'digits'"),
        (lambda k, o: rollout_docs.seal_document(k, doc(doc_version=5)), "older than"),
        (
            lambda k, o: rollout_docs.seal_document(k, doc()).replace(b"5000", b"9999"),
            "does not verify",
        ),
        (lambda k, o: b'{"rollout": 1}', "expected"),
        (lambda k, o: b"\xff garbage", "not UTF-8"),
    ],
)
def test_rollout_gate_refuses_bad_documents(make: Any, fragment: str) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    gate = RolloutGate(key.public_key(), "dev-1")
    with pytest.raises(BadRolloutDocument, match=fragment) as caught:
        gate.verify(make(key, other), "digits", min_doc_version=1000000)
    assert "\n" not in str(caught.value)


def test_a_pinned_key_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "rollout.pub").write_text(rollout_docs.public_key_b64(key) + "\n")
    gate = RolloutGate.from_file(tmp_path / "rollout.pub", "dev-1")
    assert gate.verify(rollout_docs.seal_document(key, doc()), "digits").version == 3
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(BadRolloutDocument, match="rollout key"):
        RolloutGate.from_file(tmp_path / "bad.pub", "dev-1")


# the service end to end -----------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FleetProcess, Path]]:
    where = tmp_path_factory.mktemp("rollouts")
    db = fresh_database(request, request.param, where)
    key_file = where / "rollout-key.pem"
    started = start_fleet(db, 0, "--rollout-key", str(key_file), "--rollout-tick", "0.2")
    yield started, key_file
    started.stop()


class Sim:
    """Simulated devices of one model: fleet clients with chosen agent ids."""

    def __init__(self, fleet: FleetProcess, root: Path, model: str, ids: list[str]) -> None:
        self.fleet, self.model = fleet, model
        shared = token(fleet, uses=len(ids))
        self.devices = [
            (agent, FleetClient(ClientConfig(fleet.url, root / agent, enroll_token=shared)))
            for agent in ids
        ]
        pub = httpx.get(fleet.url + "/v1/rollout-key", timeout=30).json()["public_key"]
        self.key = rollout_docs.load_public_key(pub)  # pinned out of band in real life

    def report(
        self,
        agent: str,
        client: FleetClient,
        version: int,
        result: str = "up-to-date",
        to_version: int | None = None,
        latency: float = 10.0,
    ) -> None:
        status = {
            "device_id": agent,
            "agent_version": "0.1.0",
            "active": {
                "slot": "a",
                "name": self.model,
                "version": version,
                "sha256": SHAS[version],
            },
            "last_cycle": {"result": result, "to_version": to_version, "reason": None},
        }
        if result == "rolled-back":
            status["last_cycle"]["reason"] = f"version {to_version} failed its health gate"
        lat = [latency * (1 + i / 100) for i in range(50)]
        assert report_cycle(client, status, latency_ms=lat).sent == 1

    def admitted(self, version: int, sha256: str) -> list[tuple[str, FleetClient]]:
        """The devices whose RolloutGate lets ``version`` through, by the document as it
        stands (fetched once: every device would fetch the same signed bytes)."""
        body = self.fleet.admin("GET", f"/v1/rollouts/{self.model}/document").content
        found = []
        for agent, client in self.devices:
            gate = RolloutGate(self.key, agent)
            verdict = gate.allows(
                gate.verify(body, self.model),
                model=self.model,
                version=version,
                sha256=sha256,
                length=1000,
                tuf_rollout=0,
            )
            if verdict.allowed:
                found.append((agent, client))
        return found

    def all_report(self, jobs: list[tuple[Any, ...]], **kw: Any) -> None:
        """``report(*job, **kw)`` for every job, from 6 devices at a time."""
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda job: self.report(*job, **kw), jobs))

    def status(self) -> dict[str, Any]:
        answer = self.fleet.admin("GET", f"/v1/rollouts/{self.model}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def start(sim: Sim, version: int, sha256: str, **kw: Any) -> dict[str, Any]:
    body = {"model": sim.model, "version": version, "target": {"sha256": sha256, "length": 1000}}
    answer = sim.fleet.admin("POST", "/v1/rollouts", json={**body, **kw})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.mark.slow
def test_a_good_release_promotes_and_a_bad_one_halts_itself(
    service: tuple[FleetProcess, Path], tmp_path: Path
) -> None:
    fleet, _ = service
    sim = Sim(fleet, tmp_path, "digits", agent_ids("digits", 40, 10, 15))
    sim.all_report([(a, c, 1) for a, c in sim.devices])

    # v2: good, stages 40,100; the in-stage devices install it, then everyone
    started = start(sim, 2, SHA2, stages=[40, 100], max_failure=0.1, min_devices=5)
    assert (started["state"], started["stage"]) == ("running", 0)
    first = sim.admitted(2, SHA2)
    assert len(first) == 10
    sim.all_report([(a, c, 2, "updated", 2) for a, c in first])
    assert (sim.status()["stage"], sim.status()["state"]) == (1, "running")
    rest = sim.admitted(2, SHA2)
    assert len(rest) == 25
    sim.all_report([(a, c, 2, "updated", 2) for a, c in rest if (a, c) not in first])
    done = sim.status()
    assert done["state"] == "done" and done["ok"] == 25 and done["failed"] == 0
    assert [e["kind"] for e in done["events"]] == ["started", "promoted", "completed"]

    # v3: 3 of the 10 first-stage devices fail its health gate and roll back
    start(sim, 3, SHA3, stages=[40, 100], max_failure=0.1, min_devices=5)
    first = sim.admitted(3, SHA3)
    assert len(first) == 10
    sim.all_report([(a, c, 2, "rolled-back", 3) for a, c in first[:3]])
    sim.all_report([(a, c, 3, "updated", 3) for a, c in first[3:]])
    halted = sim.status()
    assert (halted["state"], halted["stage"], halted["halt_rule"]) == ("halted", 0, "failure-share")
    assert halted["halt_detail"]["failed"] == 3 and halted["halt_detail"]["threshold"] == 0.1
    assert halted["halt_detail"]["reporting"] >= 5
    # nobody else gets it: the document now lets no device through
    assert sim.admitted(3, SHA3) == []
    assert halted["share"] == 0
    # a device revoked mid-rollout no longer counts
    failed_device = first[0][1].device_id
    assert fleet.admin("POST", f"/v1/devices/{failed_device}/revoke").status_code == 200
    assert sim.status()["failed"] == 2
    listed = {r["model"]: r for r in fleet.admin("GET", "/v1/rollouts").json()}
    assert listed["digits"]["halt_rule"] == "failure-share"


@pytest.mark.slow
def test_a_slower_p95_halts_from_the_sketches(
    service: tuple[FleetProcess, Path], tmp_path: Path
) -> None:
    fleet, _ = service
    sim = Sim(fleet, tmp_path, "speedy", agent_ids("speedy", 50, 4, 2))
    sim.all_report([(a, c, 1) for a, c in sim.devices], latency=10.0)
    started = start(
        sim, 2, SHA2, stages=[50, 100], max_failure=0.5, min_devices=3, max_latency_regression=0.2
    )
    assert started["previous_version"] == 1
    admitted = sim.admitted(2, SHA2)
    assert len(admitted) == 4
    sim.all_report([(a, c, 2, "updated", 2) for a, c in admitted], latency=15.0)  # 50 % slower
    halted = sim.status()
    assert (halted["state"], halted["halt_rule"]) == ("halted", "latency-p95")
    detail = halted["halt_detail"]
    assert detail["regression"] == pytest.approx(0.5, abs=0.1)
    assert detail["previous_p95"] < detail["p95"] and detail["threshold"] == 0.2


def test_the_timer_promotes_a_soaked_stage_without_reports(
    service: tuple[FleetProcess, Path],
) -> None:
    fleet, _ = service
    body = {"model": "quiet", "version": 1, "stages": [50, 100], "soak_s": 0.5}
    answer = fleet.admin("POST", "/v1/rollouts", json=body)
    assert answer.status_code == 200 and answer.json()["stage"] == 0, answer.text
    deadline = time.monotonic() + 60  # a bound on a busy machine, not a measurement
    while (state := fleet.admin("GET", "/v1/rollouts/quiet").json())["state"] != "done":
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert [e["kind"] for e in state["events"]] == ["started", "promoted", "completed"]


@pytest.mark.slow
def test_pause_resume_abort_from_the_cli(
    service: tuple[FleetProcess, Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    fleet, _ = service
    env = {"EDGEINFER_FLEET_URL": fleet.url, "EDGEINFER_ADMIN_TOKEN": ADMIN}

    def cli(*args: str) -> str:
        result = runner.invoke(build_app(), ["fleet", "rollout", *args], env=env)
        assert result.exit_code == 0, result.output
        assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
        return result.stdout

    shown = cli(
        "start",
        "paced",
        "7",
        "--stages",
        "5,25,100",
        "--max-failure",
        "10%",
        "--min-devices",
        "20",
        "--max-latency-regression",
        "20%",
        "--soak",
        "10m",
    )
    assert "paced 7: running, stage 1 of 3" in shown
    assert "paused" in cli("pause", "paced")
    assert json.loads(cli("status", "paced", "--json"))["state"] == "paused"
    assert "running" in cli("resume", "paced")
    assert "aborted" in cli("abort", "paced")
    listed = runner.invoke(build_app(), ["fleet", "rollouts"], env=env).stdout.splitlines()
    assert listed[0].split()[:3] == ["MODEL", "VER", "STATE"]
    assert any(line.split()[:3] == ["paced", "7", "aborted"] for line in listed)
    assert all(len(line) <= 80 for line in listed)
    status = json.loads(cli("status", "paced", "--json"))
    assert [e["kind"] for e in status["events"]] == ["started", "paused", "resumed", "aborted"]
    assert status["share"] == 0 and status["soak_s"] == 600

    monkeypatch.setenv("EDGEINFER_FLEET_URL", fleet.url)
    monkeypatch.setenv("EDGEINFER_ADMIN_TOKEN", ADMIN)
    for args, fragment in [
        (["resume", "paced"], "cannot resume"),
        (["status", "nothing-here"], "no rollout of model"),
        (["start", "paced", "8", "--stages", "5,25"], "--stages"),
    ]:
        with pytest.raises(SystemExit) as caught:
            main(["fleet", "rollout", *args])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1, err
    for body, fragment in [
        ({"model": "x", "version": 1, "stages": [9]}, "last stage must be 100"),
        ({"model": "a b", "version": 1, "stages": [100]}, "expected a model name"),
        ({"model": "x", "version": -1, "stages": [100]}, "version"),
        ({"model": "x", "version": 1, "stages": [100], "min_devices": 1.5}, "whole number"),
        ({"model": "x", "version": 1, "stages": "5,100"}, "list of percents"),
        ({"model": "x", "version": 1, "stages": [100], "target": {"sha256": "z"}}, "target"),
        ({"model": "x"}, "expected"),
    ]:
        refused = fleet.admin("POST", "/v1/rollouts", json=body)
        assert refused.status_code == 400 and fragment in refused.json()["error"], refused.text
        assert "\n" not in refused.json()["error"]
    malformed = fleet.admin("POST", "/v1/rollouts", content=b"{not json")
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
    missing = fleet.admin("GET", "/v1/rollouts/nothing-here/document")
    assert missing.status_code == 404
    assert httpx.post(fleet.url + "/v1/rollouts/paced/abort", timeout=30).status_code == 401


@pytest.mark.slow
def test_two_replicas_never_promote_a_stage_twice(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for backend in ("sqlite", "postgresql"):
        url = fresh_database(request, backend, tmp_path)
        replicas = [open_store(StoreConfig(url)) for _ in range(2)]
        try:
            plan = Plan((10, 20, 30, 40, 100), 0.1, 1, soak_s=1.0)
            rollout_service.start(replicas[0], "twice", 2, plan)
            base = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
            for step in range(3):
                now = base + dt.timedelta(seconds=2 * step)
                barrier, errors = threading.Barrier(8), []

                def decide_now(store: Any, now: dt.datetime = now, barrier: Any = barrier) -> None:
                    try:
                        barrier.wait(30)
                        rollout_service.evaluate(store, "twice", now)
                    except Exception as exc:  # a lost race shows up here
                        errors.append(exc)

                threads = [
                    threading.Thread(target=decide_now, args=(replicas[i % 2],)) for i in range(8)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                assert errors == []
            with replicas[0].session() as session:
                r = session.query(Rollout).filter_by(model="twice").one()
                kinds = [
                    (e.kind, e.detail.get("to_stage"))
                    for e in session.query(RolloutEvent).order_by(RolloutEvent.revision)
                ]
            assert r.stage == 3, backend
            assert kinds == [("started", None), ("promoted", 1), ("promoted", 2), ("promoted", 3)]
        finally:
            for store in replicas:
                store.close()


@pytest.mark.slow
def test_two_fleet_services_on_one_postgresql_promote_each_stage_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db = fresh_database(request, "postgresql", tmp_path)
    key_file = tmp_path / "rollout-key.pem"
    options = ("--rollout-key", str(key_file), "--rollout-tick", "0.05")
    first = start_fleet(db, 0, *options)
    second = start_fleet(db, 0, *options)  # the same key file: replicas sign alike
    try:
        stages = [20, 40, 60, 80, 100]
        body = {"model": "raced", "version": 1, "stages": stages, "soak_s": 0.2}
        assert first.admin("POST", "/v1/rollouts", json=body).status_code == 200
        deadline = time.monotonic() + 120  # a bound on a busy machine, not a measurement
        while (state := second.admin("GET", "/v1/rollouts/raced").json())["state"] != "done":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        kinds = [(e["kind"], e["detail"].get("to_stage")) for e in state["events"]]
        assert kinds == [
            ("started", None),
            *[("promoted", i) for i in range(1, 5)],
            ("completed", None),
        ]
        key = rollout_docs.load_public_key(
            httpx.get(first.url + "/v1/rollout-key", timeout=30).json()["public_key"]
        )
        for replica in (first, second):
            body_bytes = replica.admin("GET", "/v1/rollouts/raced/document").content
            assert rollout_docs.open_document(body_bytes, key, "raced").state == "done"
    finally:
        first.stop()
        second.stop()
    logs = "".join(first.output + second.output)
    assert "IntegrityError" not in logs and "UniqueViolation" not in logs, logs[-2000:]
