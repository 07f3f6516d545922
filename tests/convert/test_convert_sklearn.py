"""scikit-learn -> ONNX: tensor outputs (no zipmap), checked predictions, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.convert import ConversionError, sklearn_to_onnx
from edgeinfer.errors import MissingDependencyError

pytest.importorskip("skl2onnx")
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


def test_classifier_pipeline_has_tensor_outputs(xy: tuple, tmp_path: Path) -> None:
    x, y = xy
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    report = sklearn_to_onnx(pipe, tmp_path / "clf.onnx", sample=x[:32])
    assert report.output_names == ("label", "probabilities")
    with edgeinfer.load(report.path) as model:
        out = model.predict(x[:10])
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(x[:10]), atol=1e-5)
    assert out["label"].tolist() == pipe.predict(x[:10]).tolist()


def test_regressor(xy: tuple, tmp_path: Path) -> None:
    x, _ = xy
    forest = RandomForestRegressor(n_estimators=5, random_state=0).fit(x, x[:, 2])
    report = sklearn_to_onnx(forest, tmp_path / "reg.onnx", sample=x[:16], input_name="features")
    assert report.input_names == ("features",) and report.max_abs_error < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "give sample="),
        ({"sample": np.zeros(5, np.float32)}, "2-D array"),
        ({"sample": np.zeros((2, 5), np.float32), "n_features": 4}, "n_features=4"),
    ],
)
def test_bad_arguments(xy: tuple, tmp_path: Path, kwargs: dict, match: str) -> None:
    x, y = xy
    with pytest.raises(ConversionError, match=match):
        sklearn_to_onnx(LogisticRegression().fit(x, y), tmp_path / "m.onnx", **kwargs)


def test_converter_failure_is_the_cause(tmp_path: Path) -> None:
    class NotAnEstimator:
        def fit(self, *a: object) -> NotAnEstimator:
            return self

    with pytest.raises(ConversionError, match="skl2onnx could not convert NotAnEstimator") as exc:
        sklearn_to_onnx(NotAnEstimator(), tmp_path / "m.onnx", n_features=3)
    assert exc.value.__cause__ is not None


def test_missing_skl2onnx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    with pytest.raises(MissingDependencyError, match=r"edgeinfer\[sklearn\]"):
        sklearn_to_onnx(object(), tmp_path / "m.onnx", n_features=3)
