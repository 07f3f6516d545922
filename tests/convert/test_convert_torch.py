"""PyTorch -> ONNX conversion: dynamic batch, IR version ORT reads, numerical check, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeinfer
from edgeinfer.convert import ConversionError, max_ir_version, torch_to_onnx
from edgeinfer.errors import EdgeInferError, MissingDependencyError

torch = pytest.importorskip("torch")


def _cnn() -> object:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )


class TwoInOut(torch.nn.Module):  # type: ignore[misc]
    def forward(self, ids: object, mask: object) -> tuple[object, object]:
        h = ids.float() * mask.float()  # type: ignore[attr-defined]
        return h.sum(dim=1), h.mean(dim=1)


def test_cnn_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    report = torch_to_onnx(
        _cnn(),
        torch.randn(2, 1, 8, 8),
        tmp_path / "cnn.onnx",
        input_names=["pixels"],
        output_names=["logits"],
    )
    assert report.max_abs_error < 1e-4 and report.opset == 17
    proto = onnx.load(report.path)
    assert proto.ir_version <= max_ir_version()
    with edgeinfer.load(report.path) as model:
        assert model.inputs[0].shape == ("batch", 1, 8, 8)
        assert model.predict(np.zeros((5, 1, 8, 8), np.float32))["logits"].shape == (5, 10)


def test_several_inputs_outputs_and_extra_dynamic_axes(tmp_path: Path) -> None:
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.int64)
    report = torch_to_onnx(
        TwoInOut(),
        (ids, mask),
        tmp_path / "two.onnx",
        input_names=["ids", "mask"],
        output_names=["total", "mean"],
        dynamic_axes={"ids": {1: "seq"}, "mask": {1: "seq"}},
    )
    with edgeinfer.load(report.path) as model:
        out = model.predict({"ids": np.ones((3, 9), np.int64), "mask": np.ones((3, 9), np.int64)})
    assert out["total"].tolist() == [9.0, 9.0, 9.0]


def test_numpy_examples_and_default_names(tmp_path: Path) -> None:
    report = torch_to_onnx(_cnn(), np.zeros((1, 1, 8, 8), np.float32), tmp_path / "m.onnx")
    assert report.input_names == ("input",) and report.output_names == ("output",)


class Unexportable(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: object) -> object:
        return torch.linalg.svd(x)[0]


@pytest.mark.parametrize(
    ("module", "example", "kwargs", "match"),
    [
        ("not a module", None, {}, "expected a torch.nn.Module"),
        (None, "text", {}, "expected a torch.Tensor or numpy array"),
        (None, None, {"input_names": ["a", "b"]}, "2 input names for 1 example inputs"),
        (None, None, {"output_names": ["x", "x"]}, "duplicates"),
        (None, None, {"dynamic_axes": {"nope": {1: "s"}}}, "not an input or output"),
        (None, None, {"opset": 3}, "opset 3 is not supported"),
        (None, None, {"atol": 0.0, "rtol": 0.0}, "differs from torch"),
    ],
)
def test_bad_conversions(
    tmp_path: Path, module: object, example: object, kwargs: dict, match: str
) -> None:
    module = _cnn() if module is None else module
    example = torch.randn(2, 1, 8, 8) if example is None else example
    with pytest.raises(ConversionError, match=match):
        torch_to_onnx(module, example, tmp_path / "m.onnx", **kwargs)


def test_exporter_failure_keeps_its_message_as_cause(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="torch.onnx.export failed for Unexportable") as exc:
        torch_to_onnx(Unexportable(), torch.randn(2, 3, 3), tmp_path / "svd.onnx")
    assert exc.value.__cause__ is not None
    assert isinstance(exc.value, EdgeInferError)
    assert not (tmp_path / "svd.onnx").exists()


def test_missing_torch_gives_an_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A machine without the torch extra: importing torch fails.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeinfer\[torch\]'"):
        torch_to_onnx(object(), None, tmp_path / "m.onnx")
