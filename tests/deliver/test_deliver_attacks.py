"""Attacks and faults against a real repository served over HTTP on loopback.

Each must leave the device on exactly the old version with nothing written into the
active slot (the delta-for-another-base case falls back to the full bundle instead).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from deliver_support import (
    Fault,
    Fleet,
    active_slot_fingerprint,
    add_target_file,
    committed,
    fleet,
    forge_targets,
    temp_files,
)

from edgeinfer.deliver import DeltaConfig, DownloadConfig, KeyStore, PublishConfig, Publisher
from edgeinfer.deliver.delta import make_delta


@pytest.fixture
def f(tmp_path: Path, make_model: Any) -> Any:
    with fleet(tmp_path, make_model) as fl:
        yield fl


def _stays_on_v1(fl: Fleet, before: dict[str, str], result: Any, *expect: str) -> None:
    assert committed(fl.state)[1] == 1  # type: ignore[index]
    assert active_slot_fingerprint(fl.state) == before
    assert result.result in ("refused", "failed"), result
    for text in expect:
        assert text in (result.reason or ""), result.reason


def test_rollback_attack_old_metadata_is_refused(f: Fleet) -> None:
    snapshot_of_repo = f.tmp / "old-repo"
    shutil.copytree(f.repo, snapshot_of_repo)
    f.pub.publish(f.bundle(2))
    assert f.agent().result == "updated"
    before = active_slot_fingerprint(f.state)
    # the mirror now serves the older (validly signed) repository state again
    shutil.rmtree(f.repo)
    shutil.copytree(snapshot_of_repo, f.repo)
    result = f.agent()
    assert committed(f.state)[1] == 2  # type: ignore[index]
    assert active_slot_fingerprint(f.state) == before
    assert result.result == "refused" and "BadVersionNumberError" in (result.reason or "")


def test_freeze_attack_expired_metadata_is_refused(f: Fleet) -> None:
    # a repository frozen three days ago: every signature valid, the timestamp expired
    past = datetime.now(timezone.utc) - timedelta(days=3)
    frozen = Publisher(f.repo, f.keys, PublishConfig(timestamp_expiry=1.0), now=lambda: past)
    frozen.publish(f.bundle(2))
    before = active_slot_fingerprint(f.state)
    _stays_on_v1(f, before, f.agent(), "ExpiredMetadataError")


def test_mix_and_match_targets_disagreeing_with_snapshot(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    md = f.repo / "metadata"
    current = max(int(p.name.split(".")[0]) for p in md.glob("*.targets.json"))
    # serve an older, validly signed targets file under the name the snapshot points to
    (md / f"{current}.targets.json").write_bytes((md / f"{current - 1}.targets.json").read_bytes())
    before = active_slot_fingerprint(f.state)
    _stays_on_v1(f, before, f.agent(), "refused")


def test_tampered_bundle_is_refused(f: Fleet) -> None:
    f.pub.publish(f.bundle(2), channel="stable")
    target = f.target_file("models/mlp/mlp-2.tar")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    before = active_slot_fingerprint(f.state)
    result = f.agent(use_deltas=False)
    _stays_on_v1(f, before, result, "does not match the signed length and sha256")
    assert temp_files(f.state) == []  # the bad download is deleted, not kept for resume


def test_truncated_bundle_is_refused(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    target = f.target_file("models/mlp/mlp-2.tar")
    target.write_bytes(target.read_bytes()[:1000])
    before = active_slot_fingerprint(f.state)
    result = f.agent(use_deltas=False)
    _stays_on_v1(f, before, result, "tampered with or truncated")


def test_bundle_longer_than_signed_length(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    target = f.target_file("models/mlp/mlp-2.tar")
    target.write_bytes(target.read_bytes() + b"\0" * 100_000)
    before = active_slot_fingerprint(f.state)
    _stays_on_v1(f, before, f.agent(use_deltas=False), "more than the signed length")


def test_endless_data_is_cut_off(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    f.server.faults.append(Fault("mlp-2.tar", "endless"))
    before = active_slot_fingerprint(f.state)
    _stays_on_v1(f, before, f.agent(use_deltas=False), "endless-data")
    assert temp_files(f.state) == []


def test_metadata_signed_below_threshold(tmp_path: Path, make_model: Any) -> None:
    with fleet(tmp_path, make_model, targets=2) as fl:
        one_key = fl.keys.signers("targets")[:1]
        tf = add_target_file(fl.repo, "models/mlp/mlp-2.tar", b"evil", _bundle_custom(2))
        forge_targets(
            fl.repo,
            one_key,  # the attacker holds one of the two targets keys ...
            fl.keys.signers("snapshot"),  # ... and the online keys
            fl.keys.signers("timestamp"),
            lambda t: t.targets.__setitem__(tf.path, tf),
        )
        before = active_slot_fingerprint(fl.state)
        _stays_on_v1(fl, before, fl.agent(), "UnsignedMetadataError")


def test_metadata_signed_by_a_wrong_key(f: Fleet, tmp_path: Path) -> None:
    rogue = KeyStore.init(tmp_path / "rogue-keys")
    tf = add_target_file(f.repo, "models/mlp/mlp-2.tar", b"evil", _bundle_custom(2))
    forge_targets(
        f.repo,
        rogue.signers("targets"),
        f.keys.signers("snapshot"),
        f.keys.signers("timestamp"),
        lambda t: t.targets.__setitem__(tf.path, tf),
    )
    before = active_slot_fingerprint(f.state)
    _stays_on_v1(f, before, f.agent(), "UnsignedMetadataError")


def test_target_name_with_dotdot_is_refused(f: Fleet) -> None:
    v2 = f.tmp / "v2.tar"
    from edgeinfer.bundle import Bundle

    Bundle.open(f.bundle(2)).pack(v2)
    # a compromised targets key signs a target whose name climbs out of its directory
    tf = add_target_file(
        f.repo, "models/mlp/../../../evil/mlp-2.tar", v2.read_bytes(), _bundle_custom(2)
    )
    forge_targets(
        f.repo,
        f.keys.signers("targets"),
        f.keys.signers("snapshot"),
        f.keys.signers("timestamp"),
        lambda t: t.targets.__setitem__(tf.path, tf),
    )
    before = active_slot_fingerprint(f.state)
    result = f.agent()
    _stays_on_v1(f, before, result, "escapes its directory")
    assert not (f.tmp / "evil").exists()


def test_delta_for_a_different_base_falls_back_to_full(f: Fleet) -> None:
    pub = Publisher(f.repo, f.keys, PublishConfig(delta_from=0))  # no honest deltas
    result = pub.publish(f.bundle(2))
    v2_file = f.target_file(result.path)
    other = f.tmp / "other.tar"
    from edgeinfer.bundle import Bundle

    Bundle.open(f.bundle(1, seed=99)).pack(other)
    lying = f.tmp / "lying.delta"
    make_delta(other, v2_file, lying, DeltaConfig(methods=("tensor",)))
    v1 = pub.bundles()[0]
    custom = {
        "edgeinfer": {
            "kind": "delta",
            "model": "mlp",
            "from_version": 1,
            "to_version": 2,
            "base_sha256": v1.sha256,  # claims the device's base; the delta inside says otherwise
            "base_length": v1.length,
            "target_path": result.path,
            "method": "tensor",
        }
    }
    tf = add_target_file(f.repo, "deltas/mlp/mlp-1-2.delta", lying.read_bytes(), custom)
    forge_targets(
        f.repo,
        f.keys.signers("targets"),
        f.keys.signers("snapshot"),
        f.keys.signers("timestamp"),
        lambda t: t.targets.__setitem__(tf.path, tf),
    )
    out = f.agent()
    assert out.result == "updated" and out.via == "full", out
    assert "does not apply" in (out.reason or "")
    assert committed(f.state)[1] == 2  # type: ignore[index]
    assert temp_files(f.state) == []


def test_server_stalling_mid_download_then_resume(f: Fleet) -> None:
    v2 = f.pub.publish(f.bundle(2, seed=2))
    f.server.faults.append(Fault("mlp-2.tar", "stall", after=3000))
    before = active_slot_fingerprint(f.state)
    result = f.agent(use_deltas=False, download=DownloadConfig(read_timeout=0.5))
    _stays_on_v1(f, before, result, "timed out")
    assert result.result == "failed" and result.bytes_downloaded == 3000
    f.server.faults.clear()
    f.server.release.set()
    resumed = f.agent(use_deltas=False)
    assert resumed.result == "updated"
    assert resumed.bytes_downloaded == v2.length - 3000  # only the missing bytes
    ranges = [r for p, r in f.server.requests if "mlp-2.tar" in p]
    assert ranges == [None, "bytes=3000-"]
    assert temp_files(f.state) == []


def test_disk_full_refuses_before_downloading(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    before = active_slot_fingerprint(f.state)
    n_requests = len(f.server.requests)
    result = f.agent(min_free_bytes=1 << 60)
    _stays_on_v1(f, before, result, "not enough disk space")
    assert not any("targets/" in p for p, _ in f.server.requests[n_requests:])


def test_root_key_rotation_is_followed(tmp_path: Path, make_model: Any) -> None:
    with fleet(tmp_path, make_model, root=2) as fl:
        old_root_keys = {k.keyid for k in fl.keys.key_infos("root")}
        fl.keys.rotate("root")
        fl.keys.rotate("targets")
        fl.keys.rotate("timestamp")
        pub = Publisher(fl.repo, fl.keys)
        pub.publish(fl.bundle(2))
        assert not old_root_keys & {k.keyid for k in fl.keys.key_infos("root")}
        assert fl.keys.key_infos("root", status="retired") == []  # deleted once used
        result = fl.agent()
        assert result.result == "updated", result
        assert committed(fl.state)[1] == 2  # type: ignore[index]
        trusted = json.loads((fl.state / "metadata" / "root.json").read_text())
        assert trusted["signed"]["version"] == 2


def _bundle_custom(version: int) -> dict[str, Any]:
    return {
        "edgeinfer": {
            "kind": "bundle",
            "model": "mlp",
            "version": version,
            "channels": ["stable"],
            "rollout_bp": 10000,
            "min_agent_version": None,
            "format": "onnx",
            "unpacked_bytes": 10,
        }
    }


def test_signed_target_that_is_not_a_bundle_is_refused_once(f: Fleet) -> None:
    # hash and signatures are right, the content is not a bundle (a compromised build)
    tf = add_target_file(f.repo, "models/mlp/mlp-2.tar", b"not a tar" * 100, _bundle_custom(2))
    forge_targets(
        f.repo,
        f.keys.signers("targets"),
        f.keys.signers("snapshot"),
        f.keys.signers("timestamp"),
        lambda t: t.targets.__setitem__(tf.path, tf),
    )
    before = active_slot_fingerprint(f.state)
    _stays_on_v1(f, before, f.agent(), "cannot be installed", "not a readable bundle archive")
    assert temp_files(f.state) == []
    assert f.agent().result == "up-to-date"  # remembered as bad: not fetched again
