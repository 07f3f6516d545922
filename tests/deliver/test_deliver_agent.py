"""The device agent against real repositories over loopback HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from deliver_support import (
    Fleet,
    active_slot_fingerprint,
    agent_config,
    committed,
    fleet,
    make_bad_golden_bundle,
    make_bundle,
    temp_files,
)

from edgeinfer.deliver import (
    Agent,
    AgentConfig,
    AgentError,
    GateConfig,
    KeyStore,
    Publisher,
    SlotStore,
)


@pytest.fixture
def f(tmp_path: Path, make_model: Any) -> Any:
    with fleet(tmp_path, make_model) as fl:
        yield fl


def test_first_install_then_delta_update_and_status(f: Fleet) -> None:
    status = json.loads((f.state / "status.json").read_text())
    assert status["active"]["version"] == 1
    assert status["last_cycle"]["via"] == "full"
    full = f.pub.publish(f.bundle(2))
    assert [d.from_version for d in full.deltas] == [1]
    result = f.agent()
    assert (result.result, result.via, result.from_version, result.to_version) == (
        "updated",
        "delta",
        1,
        2,
    )
    assert 0 < result.bytes_downloaded == full.deltas[0].size < full.length
    status = json.loads((f.state / "status.json").read_text())
    active = status["active"]
    assert (active["name"], active["version"], active["sha256"]) == ("mlp", 2, full.sha256)
    assert Path(active["bundle_path"]).is_dir()
    assert (Path(active["bundle_path"]) / "manifest.json").is_file()
    last = status["last_cycle"]
    assert (last["result"], last["via"], last["bytes_downloaded"]) == (
        "updated",
        "delta",
        result.bytes_downloaded,
    )
    assert last["reason"] is None and status["device_id"]
    # the installed archive is byte-identical to the published one (the next delta's base)
    slot = SlotStore(f.state)
    info = slot.committed()
    assert info is not None
    assert slot.packed(info).read_bytes() == f.target_file(full.path).read_bytes()
    again = f.agent()
    assert (again.result, again.bytes_downloaded) == ("up-to-date", 0)
    assert temp_files(f.state) == []


def test_golden_sample_failure_rolls_back_and_is_not_retried(f: Fleet) -> None:
    f.pub.publish(make_bad_golden_bundle(f.make_model, f.tmp, 2))
    before = active_slot_fingerprint(f.state)
    result = f.agent()
    assert result.result == "rolled-back"
    assert "golden sample mismatch" in (result.reason or "")
    assert committed(f.state)[1] == 1  # type: ignore[index]
    assert active_slot_fingerprint(f.state) == before
    status = json.loads((f.state / "status.json").read_text())
    assert [b["version"] for b in status["bad_versions"]] == [2]
    n = len(f.server.requests)
    again = f.agent()
    assert again.result == "up-to-date"  # the bad version is remembered, not fetched again
    assert not any("targets/" in p for p, _ in f.server.requests[n:])
    f.pub.publish(f.bundle(3))  # a fixed version goes through
    assert f.agent().result == "updated"
    assert committed(f.state)[1] == 3  # type: ignore[index]


def test_latency_budget_failure_rolls_back(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    impossible = GateConfig(latency_factor=0.0, latency_slack_ms=-1.0)
    result = f.agent(gate=impossible)
    assert result.result == "rolled-back" and "latency" in (result.reason or "")
    assert committed(f.state)[1] == 1  # type: ignore[index]


def test_channel_rollout_floor_and_model_choice(f: Fleet) -> None:
    f.pub.publish(f.bundle(2), channel="beta")
    assert f.agent().result == "up-to-date"
    assert f.agent(channel="beta").result == "updated"
    f.pub.publish(f.bundle(3), rollout=0.0)
    assert f.agent(channel="beta").result == "up-to-date"  # 0 % reaches nobody
    f.pub.publish(f.bundle(3), rollout=100.0)  # widen: same bytes, new rollout
    assert f.agent().result == "updated"
    assert committed(f.state)[1] == 3  # type: ignore[index]
    f.pub.publish(f.bundle(4), min_agent_version="99.0")
    assert f.agent().result == "up-to-date"


def test_version_floor_on_a_fresh_device(f: Fleet, tmp_path: Path) -> None:
    f.pub.publish(f.bundle(2))
    result = f.agent()
    assert result.result == "updated"
    fresh = tmp_path / "fresh"
    cfg = agent_config(f.server, fresh, f.repo, version_floor=3)
    assert Agent(cfg).run_once().result == "up-to-date"
    cfg = agent_config(f.server, fresh, f.repo, version_floor=2)
    assert Agent(cfg).run_once().result == "updated"
    assert committed(fresh)[1] == 2  # type: ignore[index]


def test_agent_without_trusted_root_cannot_work(tmp_path: Path) -> None:
    agent = Agent(AgentConfig("http://127.0.0.1:9", tmp_path / "state"))
    with pytest.raises(AgentError, match="no trusted root"):
        agent.run_once()
    bad_root = tmp_path / "root.json"
    bad_root.write_text("{}")
    agent = Agent(AgentConfig("http://127.0.0.1:9", tmp_path / "state", root=bad_root))
    with pytest.raises(AgentError, match="not valid TUF root"):
        agent.run_once()


def test_unreachable_repository_is_a_failed_cycle(tmp_path: Path, f: Fleet) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = agent_config(f.server, f.state, f.repo)
    result = Agent(AgentConfig(f"http://127.0.0.1:{port}", f.state, root=cfg.root)).run_once()
    assert result.result == "failed" and "cannot fetch repository metadata" in (result.reason or "")
    assert committed(f.state)[1] == 1  # type: ignore[index]


def test_status_is_posted_to_the_report_url(f: Fleet) -> None:
    f.agent(report_url=f.server.url + "/report")
    assert f.server.posts and f.server.posts[-1]["active"]["version"] == 1
    assert f.server.posts[-1]["last_cycle"]["result"] == "up-to-date"


def test_one_agent_per_state_directory(f: Fleet) -> None:
    import fcntl

    with open(f.state / ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AgentError, match="another agent is running"):
            f.agent()


def test_plain_python_http_server_hosts_the_repository(tmp_path: Path, make_model: Any) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    repo = tmp_path / "repo"
    pub = Publisher(repo, keys)
    pub.publish(make_bundle(make_model, tmp_path, 1, seed=1))
    pub.publish(make_bundle(make_model, tmp_path, 2, seed=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        cfg = AgentConfig(
            url, tmp_path / "device", root=repo / "metadata" / "root.json", min_free_bytes=0
        )
        result = Agent(cfg).run_once()
        assert (result.result, result.to_version, result.via) == ("updated", 2, "full")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_models_need_a_model_name(f: Fleet, tmp_path: Path) -> None:
    from edgeinfer.bundle import Bundle

    other = Bundle.create(
        f.make_model(tmp_path / "o.onnx", seed=5), tmp_path / "other", name="other", version=1
    )
    f.pub.publish(other.path)
    fresh = tmp_path / "fresh"
    with pytest.raises(AgentError, match="several models"):
        Agent(agent_config(f.server, fresh, f.repo)).run_once()
    assert Agent(agent_config(f.server, fresh, f.repo, model="other")).run_once().result == (
        "updated"
    )
    assert f.agent().result == "up-to-date"  # the installed model is followed
