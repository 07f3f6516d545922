"""Tensor-aware and bsdiff deltas between packed bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from deliver_support import GOLDEN_X

from edgeinfer.bundle import Bundle, sha256_file
from edgeinfer.deliver import DeltaConfig, DeltaError, apply_delta, make_delta
from edgeinfer.deliver._onnx_wire import tensor_spans
from edgeinfer.deliver.delta import read_header


def _finetune_last_layer(src: Path, dst: Path, scale: float = 1e-3) -> Path:
    model = onnx.load(src)
    for init in model.graph.initializer:
        if init.name == "w2":
            w = onnx.numpy_helper.to_array(init)
            noise = np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
            init.CopyFrom(onnx.numpy_helper.from_array(w + scale * noise, "w2"))
    onnx.save(model, dst)
    return dst


@pytest.fixture
def packed(tmp_path: Path, make_model: Any) -> dict[str, Path]:
    base = make_model(tmp_path / "v1.onnx", n_in=4, n_hidden=256, seed=1)
    tuned = _finetune_last_layer(base, tmp_path / "v2.onnx")
    retrained = make_model(tmp_path / "v3.onnx", n_in=4, n_hidden=256, seed=3)
    out = {}
    for v, model in ((1, base), (2, tuned), (3, retrained)):
        b = Bundle.create(model, tmp_path / f"b{v}", name="mlp", version=v, golden_inputs=GOLDEN_X)
        out[f"v{v}"] = b.pack(tmp_path / f"v{v}.tar")
    return out


@pytest.mark.parametrize("methods", [("tensor",), ("bsdiff",), ("tensor", "bsdiff")])
@pytest.mark.parametrize("target", ["v2", "v3"])
def test_round_trip_is_byte_identical(
    packed: dict[str, Path], tmp_path: Path, methods: tuple[str, ...], target: str
) -> None:
    info = make_delta(packed["v1"], packed[target], tmp_path / "d", DeltaConfig(methods=methods))
    assert info.method in methods and set(info.candidates) == set(methods)
    assert info.size == (tmp_path / "d").stat().st_size
    assert info.method == min(info.candidates, key=lambda m: info.candidates[m])  # smaller wins
    out = apply_delta(packed["v1"], tmp_path / "d", tmp_path / "out.tar")
    assert sha256_file(out) == sha256_file(packed[target]) == info.target_sha256
    header = read_header(tmp_path / "d")
    assert header["base"]["sha256"] == sha256_file(packed["v1"])


def test_fine_tune_ships_only_the_changed_tensor(packed: dict[str, Path], tmp_path: Path) -> None:
    info = make_delta(packed["v1"], packed["v2"], tmp_path / "d", DeltaConfig(methods=("tensor",)))
    assert info.stats["referenced"] == 2 and info.stats["changed"] == 1
    assert info.size < 0.5 * packed["v2"].stat().st_size
    same = make_delta(packed["v1"], packed["v1"], tmp_path / "same")
    assert same.size < 400 and same.stats["changed"] == 0


def test_wire_walker_finds_every_initializer(tmp_path: Path, make_model: Any) -> None:
    path = make_model(tmp_path / "m.onnx", n_hidden=64)
    data = path.read_bytes()
    spans = tensor_spans(path, memoryview(data), min_bytes=1)
    model = onnx.load(path)
    want = {i.name: i.raw_data for i in model.graph.initializer}
    assert {s.name: data[s.offset : s.offset + s.length] for s in spans} == want


def test_wrong_base_is_refused(packed: dict[str, Path], tmp_path: Path) -> None:
    make_delta(packed["v1"], packed["v2"], tmp_path / "d")
    with pytest.raises(DeltaError, match="does not apply"):
        apply_delta(packed["v3"], tmp_path / "d", tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b"NOTADELT" + b[8:], "bad magic"),
        (lambda b: b[:-7], "truncated"),
        (lambda b: b + b"x", "trailing"),
        (lambda b: b[:-40] + bytes(40), "corrupt|does not match"),
    ],
)
def test_corrupt_delta_is_refused(
    packed: dict[str, Path], tmp_path: Path, damage: Any, match: str
) -> None:
    d = tmp_path / "d"
    make_delta(packed["v1"], packed["v3"], d, DeltaConfig(methods=("tensor",)))
    d.write_bytes(damage(d.read_bytes()))
    with pytest.raises(DeltaError, match=match):
        apply_delta(packed["v1"], d, tmp_path / "out.tar")
    assert list(tmp_path.glob(".out.tar*")) == []


def test_any_file_gets_a_delta(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    b = a[:20_000] + b"edgeinfer" + a[20_000:]
    (tmp_path / "a.bin").write_bytes(a)
    (tmp_path / "b.bin").write_bytes(b)
    info = make_delta(tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "d")
    assert info.size < 2_000
    apply_delta(tmp_path / "a.bin", tmp_path / "d", tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == b


def test_bsdiff_is_skipped_for_large_files(packed: dict[str, Path], tmp_path: Path) -> None:
    info = make_delta(packed["v1"], packed["v3"], tmp_path / "d", DeltaConfig(bsdiff_max_bytes=10))
    assert set(info.candidates) == {"tensor"}
    with pytest.raises(DeltaError, match="no delta method"):
        make_delta(
            packed["v1"],
            packed["v3"],
            tmp_path / "e",
            DeltaConfig(methods=("bsdiff",), bsdiff_max_bytes=10),
        )
