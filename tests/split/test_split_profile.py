"""Profiling cuts on real inputs, the profile file format, and the split bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.bundle import Bundle
from edgeinfer.errors import BundleError, InputError
from edgeinfer.runtime import load
from edgeinfer.split import SplitProfile, cut_points, profile_cuts, select_cuts
from edgeinfer.split.package import read_cut_record, write_split
from edgeinfer.split.profile import PROFILE_FILE


@pytest.fixture(scope="module")
def profiled(
    res_cnn: Path, digits_x: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> SplitProfile:
    cuts = select_cuts(cut_points(res_cnn), 5)
    work = tmp_path_factory.mktemp("profile")
    profile, files = profile_cuts(res_cnn, cuts, work, inputs={"pixels": digits_x[:4]}, repeats=3)
    assert sorted(files) == [c.index for c in cuts]
    return profile


def test_profile_measures_each_cut(profiled: SplitProfile) -> None:
    p = profiled
    assert p.batch == 4 and p.input_bytes == 4 * 256 and p.output_bytes == 4 * 40
    remote, local = p.cuts[0], p.cuts[-1]
    assert remote.kind == "remote" and remote.head_ms == 0 and remote.tail_ms > 0
    assert remote.bytes_up == p.input_bytes and remote.raw_inputs == ("pixels",)
    assert local.kind == "local" and local.tail_ms == 0 and local.head_ms > 0
    assert local.bytes_up == local.bytes_down == 0
    for c in p.cuts[1:-1]:
        assert c.kind == "split" and c.head_ms > 0 and c.tail_ms > 0
        assert c.bytes_up > 0 and c.bytes_down == p.output_bytes and c.raw_inputs == ()
    assert all(c.max_abs_error <= 1e-5 for c in p.cuts)
    assert len(p.model_sha256) == 64 and p.host["threads"] == 1


def test_profile_round_trip(profiled: SplitProfile, tmp_path: Path) -> None:
    path = profiled.save(tmp_path / "p.json")
    assert SplitProfile.load(path) == profiled
    assert SplitProfile.load(tmp_path) != profiled if (tmp_path / PROFILE_FILE).exists() else True
    profiled.save(tmp_path / PROFILE_FILE)
    assert SplitProfile.load(tmp_path) == profiled  # a bundle directory works too
    assert profiled.cut(profiled.cuts[1].index) == profiled.cuts[1]
    with pytest.raises(InputError, match="not in the profile"):
        profiled.cut(999)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=99), "unsupported split profile version 99"),
        (lambda d: d.pop("cuts"), "missing field 'cuts'"),
        (lambda d: d["cuts"][0].update(bytes_up=-5), "bytes_up -5 must be a number >= 0"),
        (lambda d: d["cuts"][0].update(kind="sideways"), "kind 'sideways'"),
        (lambda d: d.update(compress_outputs="int4"), "compress_outputs 'int4' must be null"),
    ],
)
def test_bad_profile_files(profiled: SplitProfile, tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = profiled.to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        SplitProfile.load(path)


def test_unreadable_profile(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable split profile"):
        SplitProfile.load(tmp_path / "x.json")
    with pytest.raises(BundleError, match="no split profile"):
        SplitProfile.load(tmp_path / "missing.json")


def test_write_split_bundles(res_cnn: Path, digits_x: np.ndarray, tmp_path: Path) -> None:
    source = Bundle.create(res_cnn, tmp_path / "src", name="res-cnn", version=3,
                           golden_inputs=digits_x[:2])  # fmt: skip
    cuts = select_cuts(cut_points(res_cnn), 4)
    pkg = write_split(source, cuts, tmp_path / "out", compress="uint8", repeats=2)
    assert sorted(pkg.heads) == [c.index for c in cuts[1:]]
    assert sorted(pkg.tails) == [c.index for c in cuts[:-1]]
    assert pkg.tails[0] == tmp_path / "out" / "tails" / "res-cnn-tail-0" / "3"
    mid = cuts[1].index
    head, tail = Bundle.open(pkg.heads[mid]), Bundle.open(pkg.tails[mid])  # verified
    assert SplitProfile.load(head.path) == pkg.profile == SplitProfile.load(tail.path)
    record = read_cut_record(head.path)
    assert record["compress"] == "uint8" and record["tail"] == f"res-cnn-tail-{mid}"
    assert read_cut_record(tail.path)["head"] == f"res-cnn-head-{mid}"
    with load(head.path) as h, load(tail.path) as t:  # golden samples check out
        assert head.check_golden(h) == [] and tail.check_golden(t) == []
        got = t.predict(h.predict({"pixels": digits_x}))["logits"]
    with load(res_cnn) as full:
        want = full.predict({"pixels": digits_x})["logits"]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    with pytest.raises(BundleError, match="not a split bundle"):
        read_cut_record(tmp_path / "src")


def test_small_bodies_are_not_packed(profiled: SplitProfile) -> None:
    """4 digits are 1 kB: under the 8 KiB threshold, sent as they are either way."""
    from edgeinfer.protocol.coding import MIN_BYTES

    for c in profiled.cuts:
        for raw, packed in ((c.bytes_up, c.packed_up), (c.bytes_down, c.packed_down)):
            assert packed is not None and packed <= raw
            if raw < MIN_BYTES:
                assert packed == raw


def test_profile_records_compressed_bytes(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path
) -> None:
    cuts = select_cuts(cut_points(res_cnn), 3)
    x = np.tile(digits_x, (2, 1, 1, 1))  # 64 digits, 16 KiB of pixels taking 17 values
    profile, _ = profile_cuts(res_cnn, cuts, tmp_path, inputs={"pixels": x}, repeats=1)
    remote = profile.cuts[0]
    assert remote.bytes_up == x.nbytes
    assert remote.packed_up is not None and remote.packed_up < x.nbytes / 3
    wire = profile.over_wire(up=True, down=False)
    assert wire.cuts[0].bytes_up == remote.packed_up
    assert wire.cuts[0].bytes_down == remote.bytes_down  # answers not compressed here
    # compressing the upload took measurable time; the 40-byte answers are sent raw
    assert remote.packed_up_ms is not None and remote.packed_up_ms > 0
    assert remote.packed_down_ms == 0.0
    assert wire.cuts[0].codec_ms == remote.packed_up_ms and remote.codec_ms == 0.0
    assert profile.over_wire(up=False, down=False) is profile
    assert SplitProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_a_profile_without_compressed_sizes_plans_with_raw_ones(profiled: SplitProfile) -> None:
    data = profiled.to_dict()
    for c in data["cuts"]:  # written before compressed sizes were recorded
        del c["packed_up"], c["packed_down"], c["packed_up_ms"], c["packed_down_ms"]
        del c["codec_ms"]
    del data["compress_outputs"]  # written before outputs could be compressed
    old = SplitProfile.from_dict(data)
    assert old.compress_outputs is None
    assert all(c.packed_up is None for c in old.cuts)
    wire = old.over_wire(up=True, down=True)
    assert [c.bytes_up for c in wire.cuts] == [c.bytes_up for c in old.cuts]
    assert all(c.codec_ms == 0.0 for c in wire.cuts)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compress": "int4"}, "unknown cut compression 'int4'"),
        ({"compress_outputs": "int4"}, "unknown output compression 'int4'"),
    ],
)
def test_unknown_compression_is_refused_before_any_work(
    res_cnn: Path, tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        profile_cuts(res_cnn, cut_points(res_cnn)[:2], tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())
