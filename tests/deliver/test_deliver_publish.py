"""The publisher: repository layout, signed metadata, custom fields, deltas, keys."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from deliver_support import make_bundle
from tuf.api.metadata import Metadata, Root

from edgeinfer.deliver import KeyStore, KeyStoreError, PublishConfig, Publisher, PublishError
from edgeinfer.deliver.keys import parse_thresholds


@pytest.fixture
def pub(tmp_path: Path) -> Publisher:
    return Publisher(tmp_path / "repo", KeyStore.init(tmp_path / "keys"))


def _md(repo: Path, name: str) -> Any:
    return Metadata.from_file(str(repo / "metadata" / name))


def test_first_publish_creates_a_consistent_repository(
    pub: Publisher, tmp_path: Path, make_model: Any
) -> None:
    v1 = make_bundle(make_model, tmp_path, 1, seed=1)
    result = pub.publish(v1, channel="beta", rollout=12.5, min_agent_version="0.1.0")
    md = tmp_path / "repo" / "metadata"
    assert {p.name for p in md.iterdir()} >= {
        "1.root.json",
        "root.json",
        "timestamp.json",
        f"{result.targets_version}.targets.json",
    }
    root = _md(tmp_path / "repo", "root.json")
    assert isinstance(root.signed, Root) and root.signed.consistent_snapshot
    targets = _md(tmp_path / "repo", f"{result.targets_version}.targets.json")
    root.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    tf = targets.signed.targets["models/mlp/mlp-1.tar"]
    fields = tf.custom["edgeinfer"]
    assert fields["channels"] == ["beta"] and fields["rollout_bp"] == 1250
    assert fields["min_agent_version"] == "0.1.0" and fields["kind"] == "bundle"
    on_disk = tmp_path / "repo" / "targets" / "models" / "mlp" / f"{result.sha256}.mlp-1.tar"
    assert on_disk.stat().st_size == tf.length == result.length
    ts = _md(tmp_path / "repo", "timestamp.json")
    snap_name = f"{ts.signed.snapshot_meta.version}.snapshot.json"
    assert ts.signed.snapshot_meta.hashes  # pinned by hash: no mix-and-match
    snap = _md(tmp_path / "repo", snap_name)
    assert snap.signed.meta["targets.json"].version == result.targets_version
    assert snap.signed.meta["targets.json"].hashes


def test_deltas_from_previous_versions(pub: Publisher, tmp_path: Path, make_model: Any) -> None:
    for v in (1, 2, 3):
        result = pub.publish(make_bundle(make_model, tmp_path, v, seed=v))
    assert sorted(d.from_version for d in result.deltas) == [1, 2]
    targets = pub.targets().targets
    d = targets["deltas/mlp/mlp-2-3.delta"].custom["edgeinfer"]
    assert d["base_sha256"] == targets["models/mlp/mlp-2.tar"].hashes["sha256"]
    assert d["target_path"] == "models/mlp/mlp-3.tar" and d["method"] in ("tensor", "bsdiff")
    limited = Publisher(pub.repo, pub.keys, PublishConfig(delta_from=1))
    result = limited.publish(make_bundle(make_model, tmp_path, 4, seed=4))
    assert [d.from_version for d in result.deltas] == [3]


def test_republish_changes_rollout_only(pub: Publisher, tmp_path: Path, make_model: Any) -> None:
    v1 = make_bundle(make_model, tmp_path, 1, seed=1)
    first = pub.publish(v1, rollout=10)
    again = pub.publish(v1, channel="beta", rollout=50)
    assert not again.created and again.sha256 == first.sha256
    assert again.channels == ("beta", "stable") and again.targets_version > first.targets_version
    clash = make_bundle(make_model, tmp_path, 1, seed=9)
    with pytest.raises(PublishError, match="already published with different content"):
        pub.publish(clash)


def test_refresh_resigns_the_timestamp(pub: Publisher, tmp_path: Path, make_model: Any) -> None:
    pub.publish(make_bundle(make_model, tmp_path, 1, seed=1))
    before = _md(pub.repo, "timestamp.json").signed.version
    assert pub.refresh() == ["timestamp"]
    assert _md(pub.repo, "timestamp.json").signed.version == before + 1
    later = Publisher(pub.repo, pub.keys, now=lambda: datetime.now(timezone.utc) + timedelta(60))
    assert later.refresh() == ["targets", "snapshot", "timestamp"]


def test_root_rotation_is_signed_by_old_and_new_keys(
    pub: Publisher, tmp_path: Path, make_model: Any
) -> None:
    pub.publish(make_bundle(make_model, tmp_path, 1, seed=1))
    old = _md(pub.repo, "1.root.json")
    pub.keys.rotate("root")
    assert "keys:root" in pub.refresh()
    new = _md(pub.repo, "2.root.json")
    old.signed.verify_delegate("root", new.signed_bytes, new.signatures)  # old threshold
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)  # new threshold
    assert (pub.repo / "metadata" / "root.json").read_bytes() == (
        pub.repo / "metadata" / "2.root.json"
    ).read_bytes()
    assert not list(pub.keys.path.glob("root-*.pem"))[1:]  # the retired key is gone


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"rollout": 120.0}, "not within 0..100"),
        ({"channel": "no spaces"}, "channel"),
        ({"min_agent_version": "1.x"}, "dotted integers"),
    ],
)
def test_bad_publish_options(
    pub: Publisher, tmp_path: Path, make_model: Any, bad: dict[str, Any], match: str
) -> None:
    with pytest.raises(PublishError, match=match):
        pub.publish(make_bundle(make_model, tmp_path, 1, seed=1), **bad)


def test_bare_model_is_refused(pub: Publisher, tmp_path: Path, make_model: Any) -> None:
    with pytest.raises(PublishError, match="bare model file"):
        pub.publish(make_model(tmp_path / "m.onnx"))


def test_private_keys_never_inside_the_repository(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "repo" / "keys")
    with pytest.raises(KeyStoreError, match="inside the repository"):
        Publisher(tmp_path / "repo", store)


def test_key_store(tmp_path: Path) -> None:
    store = KeyStore.init(tmp_path / "k", {"root": 2})
    assert store.thresholds == {"root": 2, "targets": 1, "snapshot": 1, "timestamp": 1}
    assert len(store.signers("root")) == 2
    for pem in (tmp_path / "k").glob("*.pem"):
        assert pem.stat().st_mode & 0o077 == 0
    with pytest.raises(KeyStoreError, match="already holds keys"):
        KeyStore.init(tmp_path / "k")
    again = KeyStore.open(tmp_path / "k")
    assert {k.keyid for k in again.key_infos("root")} == {k.keyid for k in store.key_infos("root")}
    data = json.loads((tmp_path / "k" / "keys.json").read_text())
    assert "private" not in json.dumps(data).lower()
    with pytest.raises(KeyStoreError, match="no key store"):
        KeyStore.open(tmp_path / "nothing")


def test_publisher_refuses_a_store_below_threshold(tmp_path: Path, make_model: Any) -> None:
    store = KeyStore.init(tmp_path / "k", {"targets": 2})
    pub = Publisher(tmp_path / "repo", store)
    pub.publish(make_bundle(make_model, tmp_path, 1, seed=1))
    v2 = make_bundle(make_model, tmp_path, 2, seed=2)
    (store.path / store.key_infos("targets")[0].file).unlink()
    with pytest.raises(KeyStoreError, match="private key of targets key .* missing"):
        Publisher(tmp_path / "repo", KeyStore.open(store.path)).publish(v2)
    weaker = KeyStore.open(store.path)
    del weaker.keys[weaker.key_infos("targets")[0].keyid]
    with pytest.raises(KeyStoreError, match="threshold is 2"):
        Publisher(tmp_path / "repo", weaker).publish(v2)
    assert pub.bundles()[-1].version == 1  # nothing was published


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (["root"], "ROLE=N"),
        (["owner=2"], "ROLE=N"),
        (["root=0"], "between"),
        (["root=x"], "ROLE=N"),
    ],
)
def test_threshold_parsing(items: list[str], match: str) -> None:
    with pytest.raises(KeyStoreError, match=match):
        parse_thresholds(items)
    assert parse_thresholds(["root=3", "timestamp=1"]) == {"root": 3, "timestamp": 1}
