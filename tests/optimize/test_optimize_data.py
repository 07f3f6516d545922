"""Loading and validating eval/calibration data against a model's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeinfer.errors import InputError
from edgeinfer.optimize.data import calibration_reader, load_dataset, load_labels, model_specs
from edgeinfer.tensors import TensorSpec

PIXELS = (TensorSpec("pixels", "float32", ("batch", 1, 8, 8)),)
TWO = (
    TensorSpec("ids", "int64", ("batch", "seq")),
    TensorSpec("mask", "int64", ("batch", "seq")),
)


def test_reads_npz_with_labels_and_converts_dtype(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, pixels=np.zeros((5, 1, 8, 8), np.float64), labels=np.arange(5))
    data = load_dataset(path, PIXELS)
    assert len(data) == 5
    assert data.arrays["pixels"].dtype == np.float32
    assert data.labels is not None and list(data.labels) == [0, 1, 2, 3, 4]


def test_bare_array_iterator_and_reader() -> None:
    x = np.ones((6, 1, 8, 8), np.float32)
    assert len(load_dataset(x, PIXELS)) == 6
    batches = [{"ids": np.ones((2, 4), np.int64), "mask": np.ones((2, 4), np.int64)}] * 3
    data = load_dataset(iter(batches), TWO)
    assert len(data) == 6
    reader = calibration_reader(data, batch_size=4)
    got = []
    while (feeds := reader.get_next()) is not None:
        got.append(len(feeds["ids"]))
    assert got == [4, 2]
    # an ONNX Runtime CalibrationDataReader is a source too
    reader.rewind()
    assert len(load_dataset(reader, TWO)) == 6


def test_labels_from_files(tmp_path: Path) -> None:
    np.save(tmp_path / "y.npy", np.arange(3))
    np.savez(tmp_path / "y.npz", anything=np.arange(3))
    assert list(load_labels(tmp_path / "y.npy")) == [0, 1, 2]
    assert list(load_labels(tmp_path / "y.npz")) == [0, 1, 2]
    data = load_dataset(np.ones((3, 1, 8, 8), np.float32), PIXELS, labels=tmp_path / "y.npy")
    assert data.labels is not None


@pytest.mark.parametrize(
    ("source", "specs", "match"),
    [
        ({"pixel": np.ones((2, 1, 8, 8), np.float32)}, PIXELS, r"missing input\(s\) 'pixels'"),
        (
            {"pixels": np.ones((2, 1, 8, 8), np.float32), "extra": np.ones(2)},
            PIXELS,
            r"unknown input\(s\) 'extra'",
        ),
        (np.ones((2, 1, 7, 7), np.float32), PIXELS, r"expected float32 \[batch,1,8,8\]"),
        (np.ones((2, 8, 8), np.float32), PIXELS, "rank 3, expected rank 4"),
        ({"ids": np.ones((2, 4)), "mask": np.ones((2, 4), np.int64)}, TWO, "float -> integer"),
        (
            {"ids": np.ones((2, 4), np.int64), "mask": np.ones((3, 4), np.int64)},
            TWO,
            "different numbers of samples",
        ),
        (np.ones((0, 1, 8, 8), np.float32), PIXELS, "empty"),
        (np.ones((2, 4), np.int64), TWO, "one bare array given, but the model has 2 inputs"),
        (iter([]), TWO, "yielded no batches"),
        (42, PIXELS, "not a data source"),
    ],
)
def test_bad_data_names_the_mismatch(source: object, specs: tuple, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_dataset(source, specs, what="eval data")


def test_bad_labels_and_files(tmp_path: Path) -> None:
    x = np.ones((4, 1, 8, 8), np.float32)
    with pytest.raises(InputError, match="labels: 3 labels for 4 eval data samples"):
        load_dataset(x, PIXELS, labels=np.arange(3))
    with pytest.raises(InputError, match="not found"):
        load_dataset(tmp_path / "missing.npz", PIXELS)
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="expected .npz or .npy"):
        load_dataset(tmp_path / "data.csv", PIXELS)


def test_fixed_batch_models_take_whole_batches(tmp_path: Path) -> None:
    fixed = (TensorSpec("x", "float32", (2, 3)),)
    data = load_dataset(np.ones((4, 3), np.float32), fixed)
    assert data.batch == 2 and [len(b["x"]) for b in data.batches(32)] == [2, 2]
    with pytest.raises(InputError, match="batches of exactly 2"):
        load_dataset(np.ones((3, 3), np.float32), fixed)


def test_model_specs_reads_the_signature(mlp_path: Path) -> None:
    (spec,) = model_specs(mlp_path)
    assert spec.name == "x" and spec.dtype == "float32"
