"""Which update a device takes: the pure rules of edgeinfer.deliver.select."""

from __future__ import annotations

from typing import Any

import pytest
from tuf.api.metadata import TargetFile

from edgeinfer.deliver.select import Device, choose
from edgeinfer.deliver.targets import parse_target, rollout_bucket

SHA = {v: f"{v:064x}" for v in range(10)}


def bundle(version: int, **fields: Any) -> tuple[str, TargetFile]:
    path = f"models/mlp/mlp-{version}.tar"
    custom = {
        "kind": "bundle",
        "model": "mlp",
        "version": version,
        "channels": ["stable"],
        "rollout_bp": 10000,
        "min_agent_version": None,
        "format": "onnx",
        "unpacked_bytes": 100,
        **fields,
    }
    return path, TargetFile(
        1000 + version, {"sha256": SHA[version]}, path, {"custom": {"edgeinfer": custom}}
    )


def delta(src: int, dst: int, base: str, length: int = 50) -> tuple[str, TargetFile]:
    path = f"deltas/mlp/mlp-{src}-{dst}.delta"
    custom = {
        "kind": "delta",
        "model": "mlp",
        "from_version": src,
        "to_version": dst,
        "base_sha256": base,
        "base_length": 1000 + src,
        "target_path": f"models/mlp/mlp-{dst}.tar",
        "method": "tensor",
    }
    return path, TargetFile(
        length, {"sha256": f"{length:064x}"}, path, {"custom": {"edgeinfer": custom}}
    )


def device(**kw: Any) -> Device:
    kw.setdefault("device_id", "device-1")
    kw.setdefault("agent_version", "0.1.0")
    return Device(**kw)


INSTALLED_1 = {"installed_name": "mlp", "installed_version": 1, "installed_sha256": SHA[1]}


def test_newest_allowed_version_wins() -> None:
    c = choose([bundle(1), bundle(3), bundle(2)], device(**INSTALLED_1))
    assert c.full is not None and c.full.version == 3 and c.delta is None


def test_delta_only_from_the_exact_installed_bundle() -> None:
    targets = [bundle(1), bundle(2), delta(1, 2, SHA[1], 60), delta(1, 2, SHA[5], 10)]
    c = choose(targets, device(**INSTALLED_1))
    assert c.delta is not None and c.delta.base_sha256 == SHA[1]
    c = choose(targets, device(installed_name="mlp", installed_version=1, installed_sha256=SHA[7]))
    assert c.full is not None and c.delta is None  # another base: full bundle


@pytest.mark.parametrize(
    ("fields", "dev", "why"),
    [
        ({"channels": ["beta"]}, {}, "channel"),
        ({"rollout_bp": 0}, {}, "rollout"),
        ({"min_agent_version": "9.0"}, {}, "needs agent"),
        ({}, {"bad": frozenset({SHA[2]})}, "health gate"),
    ],
)
def test_skipped_with_a_reason(fields: dict[str, Any], dev: dict[str, Any], why: str) -> None:
    c = choose([bundle(1), bundle(2, **fields)], device(**INSTALLED_1, **dev))
    assert c.full is None
    assert any(why in s for s in c.skipped), c.skipped


def test_version_floor_and_no_downgrades() -> None:
    assert choose([bundle(1), bundle(2)], device(version_floor=3)).full is None
    c = choose([bundle(1), bundle(2)], device(version_floor=2))
    assert c.full is not None and c.full.version == 2
    assert choose([bundle(1)], device(installed_name="mlp", installed_version=4)).full is None


def test_rollout_bucket_is_stable_and_monotonic() -> None:
    buckets = [rollout_bucket(f"dev-{i}", "mlp") for i in range(2000)]
    assert buckets == [rollout_bucket(f"dev-{i}", "mlp") for i in range(2000)]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.05 < share < 0.15  # about 10 % of devices are in a 10 % rollout
    inside = [i for i, b in enumerate(buckets) if b < 10]
    wider = [i for i, b in enumerate(buckets) if b < 50]
    assert set(inside) <= set(wider)  # widening keeps everyone who was in


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("models/mlp/../../x/mlp-1.tar", "escapes"),
        ("/models/mlp/mlp-1.tar", "relative"),
        ("models/mlp/mlp-1.zip", "NAME-VERSION"),
        ("models/mlp/other-1.tar", "NAME-VERSION"),
    ],
)
def test_bad_target_names(path: str, match: str) -> None:
    _, tf = bundle(1)
    with pytest.raises(ValueError, match=match):
        parse_target(path, tf.length, tf.hashes, tf.custom)


def test_invalid_targets_are_reported_and_foreign_ones_ignored() -> None:
    _, tf = bundle(2)
    evil = TargetFile(tf.length, tf.hashes, "models/../mlp-2.tar", tf.unrecognized_fields)
    foreign = TargetFile(10, {"sha256": SHA[9]}, "docs/readme.txt")
    c = choose(
        [bundle(1), ("models/../mlp-2.tar", evil), ("docs/readme.txt", foreign)],
        device(**INSTALLED_1),
    )
    assert c.full is None
    assert len(c.invalid) == 1 and "escapes" in c.invalid[0]


def test_several_models_need_a_name() -> None:
    other_path = "models/other/other-1.tar"
    _, tf = bundle(1)
    fields = dict(tf.custom["edgeinfer"], model="other")
    other = TargetFile(10, {"sha256": SHA[8]}, other_path, {"custom": {"edgeinfer": fields}})
    c = choose([bundle(1), (other_path, other)], device())
    assert c.problem is not None and "several models" in c.problem
    c = choose([bundle(1), (other_path, other)], device(model="other"))
    assert c.full is not None and c.full.model == "other"
