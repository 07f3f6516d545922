"""Cut compression: uint8 per-sample affine and fp16, in the graphs, with fidelity measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from split_models import make_res_cnn

from edgeinfer.errors import InputError
from edgeinfer.runtime import load
from edgeinfer.split import cut_points, extract
from edgeinfer.split.compress import (
    compressed_bytes,
    dequantize_uint8,
    measure_fidelity,
    quantize_uint8,
    wire_names,
)


def test_numpy_reference_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 4, 5, 5)) * [[[[1.0]]], [[[10.0]]], [[[0.01]]]]).astype(np.float32)
    q, scale, offset = quantize_uint8(x)
    assert q.dtype == np.uint8 and q.shape == x.shape
    assert scale.shape == offset.shape == (3, 1)
    back = dequantize_uint8(q, scale, offset)
    err = np.abs(back - x).reshape(3, -1).max(axis=1)
    assert np.all(err <= scale[:, 0] / 2 + 1e-6)  # per sample: half a step at most
    const = np.full((2, 7), 3.5, np.float32)
    assert np.array_equal(dequantize_uint8(*quantize_uint8(const)), const)


def test_uint8_graph_matches_reference(res_cnn: Path, digits_x: np.ndarray, tmp_path: Path) -> None:
    cut = next(c for c in cut_points(res_cnn) if c.tensors == ("r1",))
    plain = extract(res_cnn, cut, tmp_path / "plain")
    packed = extract(res_cnn, cut, tmp_path / "u8", compress="uint8")
    feeds = {"pixels": digits_x}
    with load(plain.head, providers=["cpu"]) as h:
        r1 = h.predict(feeds)["r1"]
    with load(packed.head, providers=["cpu"]) as h:
        assert [s.name for s in h.outputs] == wire_names(cut.crossing[0], "uint8")
        sent = h.predict(feeds)
    q, scale, offset = sent["r1__u8"], sent["r1__scale"], sent["r1__offset"]
    assert q.dtype == np.uint8 and q.shape == r1.shape and scale.shape == (len(digits_x), 1)
    ref_q, ref_scale, ref_offset = quantize_uint8(r1)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    np.testing.assert_allclose(offset, ref_offset, rtol=1e-6)
    assert np.abs(q.astype(int) - ref_q.astype(int)).max() <= 1  # rounding ties may differ
    assert sum(v.nbytes for v in sent.values()) <= r1.nbytes / 4 + 8 * len(digits_x)


@pytest.mark.parametrize("mode", ["uint8", "fp16"])
def test_fidelity_cost_is_small(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path, mode: str
) -> None:
    feeds = {"pixels": digits_x}
    for cut in cut_points(res_cnn)[1:-1]:
        files = extract(res_cnn, cut, tmp_path / f"{mode}-{cut.index}", compress=mode)
        fid = measure_fidelity(str(res_cnn), str(files.head), str(files.tail), feeds, mode)
        assert fid.mode == mode
        limit = 0.05 if mode == "uint8" else 2e-3
        assert fid.relative_error < limit, (cut, fid)
        assert fid.top1_agreement is not None and fid.top1_agreement >= 0.9, (cut, fid)
        assert fid.max_abs_error > 0


def test_uncompressed_fidelity_is_exact(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path
) -> None:
    files = extract(res_cnn, 5, tmp_path)
    fid = measure_fidelity(str(res_cnn), str(files.head), str(files.tail), {"pixels": digits_x})
    assert fid.max_abs_error <= 1e-5 and fid.top1_agreement == 1.0


def test_compressed_bytes(res_cnn: Path) -> None:
    cuts = cut_points(res_cnn)
    mid = next(c for c in cuts if c.tensors == ("r1",))
    assert compressed_bytes(mid, None) == 2048
    assert compressed_bytes(mid, "fp16") == 1024
    assert compressed_bytes(mid, "uint8") == 512 + 8
    shaped = next(c for c in cuts if "flat_shape" in c.tensors)  # int64 crosses as is
    assert compressed_bytes(shaped, "uint8") == 512 // 4 + 8 + 16
    # the extremes are whole-model placements: never compressed
    assert compressed_bytes(cuts[0], "uint8") == cuts[0].bytes_per_sample


def test_extreme_cuts_stay_uncompressed(res_cnn: Path, tmp_path: Path) -> None:
    cuts = cut_points(res_cnn)
    for cut in (cuts[0], cuts[-1]):
        files = extract(res_cnn, cut, tmp_path / str(cut.index), compress="uint8")
        with load(files.tail, providers=["cpu"]) as t:
            assert [s.name for s in t.inputs] == list(cut.tensors)


def test_newer_opset_uses_axes_input(digits_x: np.ndarray, tmp_path: Path) -> None:
    path = make_res_cnn(tmp_path / "opset18.onnx", opset=18)
    files = extract(path, 2, tmp_path / "out", compress="uint8")
    fid = measure_fidelity(str(path), str(files.head), str(files.tail), {"pixels": digits_x})
    assert fid.relative_error < 0.05


def test_bad_modes(res_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown cut compression 'int4'"):
        extract(res_cnn, 2, tmp_path, compress="int4")
    old = make_res_cnn(tmp_path / "opset11.onnx", opset=11)
    with pytest.raises(InputError, match="opset >= 13"):
        extract(old, 2, tmp_path / "old", compress="uint8")
