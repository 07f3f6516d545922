"""Cut and output compression: uint8 affine (per sample, or per channel for outputs) and fp16,
in the graphs, with fidelity measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from split_models import make_res_cnn

from edgeinfer.errors import InputError
from edgeinfer.runtime import load
from edgeinfer.split import cut_points, extract
from edgeinfer.split.compress import (
    compress_outputs,
    compressed_bytes,
    dequantize_uint8,
    measure_fidelity,
    quantize_uint8,
    restore_outputs,
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


# ------------------------------------------------------------------ output compression
def test_per_channel_dequantize_round_trip() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 3, 50)).astype(np.float32) * np.array([[320.0], [1.0], [0.01]])
    x = x.astype(np.float32)
    flat = x.reshape(2, 3, -1)
    lo, hi = flat.min(axis=2, keepdims=True), flat.max(axis=2, keepdims=True)
    scale = ((hi - lo) / 255).astype(np.float32)
    q = np.rint((flat - lo) / scale).astype(np.uint8)
    back = dequantize_uint8(q, scale, lo)
    assert back.shape == x.shape and back.dtype == np.float32
    assert np.all(np.abs(back - x) <= scale / 2 + 1e-6)  # each channel within its own step


def _detector_with_photos(nudenet_path: Path, tmp_path: Path) -> Path:
    model = onnx.load(nudenet_path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, size in zip(dims[2:], (320, 320), strict=True):
        d.Clear()
        d.dim_value = size
    path = tmp_path / "detector.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("mode", ["uint8", "fp16"])
def test_detector_outputs_compressed_per_channel(
    nudenet_path: Path, photos: np.ndarray, tmp_path: Path, mode: str
) -> None:
    path = _detector_with_photos(nudenet_path, tmp_path)
    packed = tmp_path / f"{mode}.onnx"
    onnx.save(compress_outputs(onnx.load(path), mode), packed)
    with load(path, providers=["cpu"]) as full, load(packed, providers=["cpu"]) as small:
        want = full.predict({"images": photos})["output0"]  # [2, 4 boxes + 18 classes, 2100]
        wire = small.predict({"images": photos})
    got = restore_outputs(wire)
    assert list(got) == ["output0"] and got["output0"].dtype == np.float32
    err = np.abs(got["output0"] - want)
    if mode == "fp16":
        assert list(wire) == ["output0__fp16"] and wire["output0__fp16"].dtype == np.float16
        assert err[:, :4].max() <= 0.25 and err[:, 4:].max() <= 1e-3
        return
    assert list(wire) == ["output0__u8", "output0__scale", "output0__offset"]
    assert wire["output0__u8"].nbytes == want.nbytes // 4
    assert wire["output0__scale"].shape == (2, 22, 1)
    # one range per channel: boxes (hundreds of px) do not wash out the scores (0..1)
    assert np.all(err <= wire["output0__scale"] / 2 + 1e-4)
    assert err[:, :4].max() <= 1.3 and err[:, 4:].max() <= 5e-3


def test_rank2_outputs_keep_one_range_per_sample(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path
) -> None:
    packed = tmp_path / "out-u8.onnx"
    onnx.save(compress_outputs(onnx.load(res_cnn), "uint8"), packed)
    with load(res_cnn, providers=["cpu"]) as full, load(packed, providers=["cpu"]) as small:
        want = full.predict({"pixels": digits_x})["logits"]
        wire = small.predict({"pixels": digits_x})
    assert wire["logits__scale"].shape == (len(digits_x), 1)
    got = restore_outputs(wire)["logits"]
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_restore_outputs_passes_others_and_names_missing_ranges() -> None:
    mask = np.ones((1, 4), np.int64)
    out = restore_outputs({"mask": mask, "scale": np.ones(1, np.float32)})
    assert set(out) == {"mask", "scale"}  # not quantized: left alone
    with pytest.raises(InputError, match="'y__u8' came without y__scale and y__offset"):
        restore_outputs({"y__u8": np.zeros((1, 2), np.uint8)})


def test_bad_output_modes(res_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown output compression 'int4'"):
        compress_outputs(onnx.load(res_cnn), "int4")
    old = onnx.load(make_res_cnn(tmp_path / "opset11.onnx", opset=11))
    with pytest.raises(InputError, match="output compression needs ONNX opset >= 13"):
        compress_outputs(old, "uint8")
