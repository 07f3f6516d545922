"""``edgeinfer convert``: PyTorch and scikit-learn files to ONNX, checked against the source."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeinfer.cli.main import main

torch = pytest.importorskip("torch")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    out = capsys.readouterr()
    return code, out.out + out.err


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    ).eval()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def test_exported_program_with_dynamic_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _cnn()
    x = torch.randn(2, 1, 8, 8)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    code, text = _cli(
        capsys, "convert", str(tmp_path / "cnn.pt2"), "--out", str(tmp_path / "m.onnx")
    )
    assert code == 0, text
    assert "max abs error" in text
    five = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(five)).numpy()
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", five), want, atol=1e-5)


def test_torchscript_needs_sample_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _cnn()
    x = torch.randn(2, 1, 8, 8)
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "cnn.pt")
    code, text = _cli(
        capsys, "convert", str(tmp_path / "cnn.pt"), "--out", str(tmp_path / "m.onnx")
    )
    assert code == 2
    assert "--inputs FILE" in text and "Traceback" not in text
    np.save(tmp_path / "x.npy", x.numpy())
    code, text = _cli(
        capsys,
        "convert",
        str(tmp_path / "cnn.pt"),
        "--out",
        str(tmp_path / "m.onnx"),
        "--inputs",
        str(tmp_path / "x.npy"),
    )
    assert code == 0, text
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", x.numpy()), want, atol=1e-5)


def test_pickled_sklearn_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skl2onnx")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(80, 4)).astype(np.float32)
    labels = (rows[:, 0] + rows[:, 1] > 0).astype(int)
    pipe = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=5, random_state=0))
    pipe.fit(rows, labels)
    (tmp_path / "rf.pkl").write_bytes(pickle.dumps(pipe))
    np.save(tmp_path / "rows.npy", rows[:10])
    code, text = _cli(
        capsys,
        "convert",
        str(tmp_path / "rf.pkl"),
        "--out",
        str(tmp_path / "rf.onnx"),
        "--inputs",
        str(tmp_path / "rows.npy"),
    )
    assert code == 0, text
    np.testing.assert_array_equal(_run(tmp_path / "rf.onnx", rows), pipe.predict(rows))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "model.keras",
            b"x",
            "Keras cannot load the model: not a Keras model file"
            if importlib.util.find_spec("tensorflow")
            else "pip install 'edgeinfer[tensorflow]'",
        ),
        ("data.npy", b"x", "unknown model file '.npy'"),
        ("broken.pt2", b"not a zip", "not a program saved with torch.export.save"),
    ],
)
def test_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    code, text = _cli(capsys, "convert", str(tmp_path / name), "--out", str(tmp_path / "m.onnx"))
    assert code == 2
    assert message in text
    assert len(text.strip().splitlines()) == 1


def test_out_must_be_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.pt2").write_bytes(b"x")
    code, text = _cli(capsys, "convert", str(tmp_path / "m.pt2"), "--out", str(tmp_path / "m.bin"))
    assert code == 2 and "expected a path ending in .onnx" in text
