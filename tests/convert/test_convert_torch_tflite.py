"""PyTorch -> TFLite with litert-torch: named signatures, NCHW kept, parity against torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeinfer.cli.main import main
from edgeinfer.convert import ConversionError, torch_to_tflite
from edgeinfer.convert.tflite import inspect_tflite, run_tflite
from edgeinfer.errors import InputError, MissingDependencyError

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch", reason="litert-torch is installed by the Makefile")

# litert-torch imports TensorFlow and JAX (~15 s) before the first conversion.
pytestmark = pytest.mark.slow


def _digits() -> Any:
    from sklearn.datasets import load_digits

    x = load_digits().data
    return torch.from_numpy((x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))


def _cnn() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )


class TwoHeads(torch.nn.Module):  # type: ignore[misc]
    """An MLP on two inputs (one of them int64) with two outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = torch.nn.Embedding(10, 4)
        self.body = torch.nn.Sequential(torch.nn.Linear(6 + 4, 16), torch.nn.GELU())
        self.score = torch.nn.Linear(16, 1)
        self.classes = torch.nn.Linear(16, 3)

    def forward(self, features: Any, kind: Any) -> tuple[Any, Any]:
        h = self.body(torch.cat([features, self.embed(kind)], dim=-1))
        return self.score(h), self.classes(h).softmax(-1)


def test_cnn_keeps_nchw_and_the_digit_predictions(tmp_path: Path) -> None:
    images = _digits()
    report = torch_to_tflite(
        _cnn(), images[:4], tmp_path / "cnn.tflite", input_names=["pixels"],
        output_names=["logits"],
    )  # fmt: skip
    assert report.target == "tflite" and report.layout == "NCHW"
    assert report.input_names == ("pixels",) and report.output_names == ("logits",)
    assert report.max_abs_error < 1e-4 and report.cosine > 0.9999
    info = inspect_tflite(report.path)
    assert info.inputs[0].shape == (4, 1, 8, 8) and not info.quantized  # NCHW, float32
    # Other images than the samples: LiteRT answers as torch does.
    batch = images[100:104]
    got = run_tflite(report.path, {"pixels": batch.numpy()}, signature=True)["logits"]
    want = _cnn().eval()(batch).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_mlp_with_two_inputs_two_outputs_and_int64(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    kind = np.array([[1], [4], [9]], np.int64)[:, 0]
    report = torch_to_tflite(TwoHeads(), (features, kind), tmp_path / "mlp.tflite",
                             input_names=["features", "kind"],
                             output_names=["score", "classes"])  # fmt: skip
    assert report.layout == "" and report.cosine > 0.9999
    assert any("int64 -> int32" in n for n in report.notes)
    got = run_tflite(
        report.path, {"features": features, "kind": kind.astype(np.int32)}, signature=True
    )
    assert set(got) == {"score", "classes"}
    np.testing.assert_allclose(got["classes"].sum(-1), 1.0, atol=1e-5)


def test_a_third_party_module_converts(tmp_path: Path) -> None:
    """A transformers ResNet (its code, not ours), tiny config, random weights."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=5
    )
    torch.manual_seed(0)
    net = transformers.ResNetForImageClassification(config)

    class Logits(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: Any) -> Any:
            return self.net(pixel_values=pixels).logits

    report = torch_to_tflite(Logits(), torch.rand(1, 3, 32, 32), tmp_path / "resnet.tflite")
    assert report.layout == "NCHW" and report.cosine > 0.9999, report


def test_parity_failure_names_the_output(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="output 'logits' differs from the source"):
        torch_to_tflite(_cnn(), _digits()[:1], tmp_path / "m.tflite",
                        output_names=["logits"], atol=0.0)  # fmt: skip


class Svd(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: Any) -> Any:
        return torch.linalg.svd(x)[0]


@pytest.mark.parametrize(
    ("module", "sample", "kwargs", "error", "match"),
    [
        ("not a module", None, {}, InputError, "expected a torch.nn.Module"),
        (None, "text", {}, InputError, "expected a torch.Tensor or numpy array"),
        (None, None, {"input_names": ["a", "b"]}, InputError, "2 input names for 1 inputs"),
        (None, None, {"output_names": ["9x"]}, InputError, "distinct Python identifiers"),
        (None, torch.zeros(1, 3, 8, 8), {}, InputError, "fails on the sample inputs"),
        (Svd(), torch.rand(1, 3, 3), {}, ConversionError, "litert-torch could not convert Svd"),
    ],
)
def test_bad_requests(
    tmp_path: Path, module: Any, sample: Any, kwargs: dict, error: type, match: str
) -> None:
    module = _cnn() if module is None else module
    sample = torch.rand(1, 1, 8, 8) if sample is None else sample
    with pytest.raises(error, match=match):
        torch_to_tflite(module, sample, tmp_path / "m.tflite", **kwargs)
    assert not (tmp_path / "m.tflite").exists()


def test_cli_converts_an_exported_program(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = _digits()
    program = torch.export.export(_cnn().eval(), (images[:2],))
    torch.export.save(program, tmp_path / "cnn.pt2")
    out = tmp_path / "cnn.tflite"
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / "cnn.pt2"), "--to", "tflite", "--out", str(out)])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "TFLite" in text and "layout NCHW" in text and "cosine 1.0000" in text, text
    assert "on the program's example inputs" in text, text
    assert inspect_tflite(out).inputs[0].shape == (2, 1, 8, 8)


def test_cli_refuses_torchscript_for_tflite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.jit.save(torch.jit.script(_cnn()), tmp_path / "cnn.pt")
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / "cnn.pt"), "--to", "tflite", "--out",
              str(tmp_path / "m.tflite"), "--inputs", str(tmp_path / "x.npy")])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "torch.export.save (.pt2)" in err and "Traceback" not in err, err


def test_missing_litert_torch_gives_the_pip_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps litert-torch=="):
        torch_to_tflite(_cnn(), torch.rand(1, 1, 8, 8), tmp_path / "m.tflite")


def test_the_converted_model_optimizes_by_its_signature_names(tmp_path: Path) -> None:
    """convert, then optimize: eval data keyed by the names convert reported (``pixels``),
    several samples for a model converted at batch 1; the bundle's golden call is one."""
    from sklearn.datasets import load_digits

    from edgeinfer.bundle import Bundle
    from edgeinfer.optimize import SearchConfig
    from edgeinfer.optimize.tflite import optimize_tflite

    images = _digits()
    report = torch_to_tflite(_cnn(), images[:1], tmp_path / "cnn.tflite", input_names=["pixels"])
    labels = load_digits().target
    result = optimize_tflite(
        report.path,
        {"pixels": images[100:124].numpy(), "labels": labels[100:124]},
        tmp_path / "opt",
        candidates=("aeq-weight-only-int8",),
        config=SearchConfig(metric="agreement", max_drop="1%", repeats=2, memory=False),
        report=False,
    ).result
    assert [c.status for c in result.candidates] == ["ok"], result.candidates
    from edgeinfer.runtime.model import load

    bundle = Bundle.open(tmp_path / "opt")
    assert bundle.manifest.golden
    with load(bundle.path, providers=["cpu"]) as model:
        assert bundle.check_golden(model) == []
