"""The fraud classifier: a scikit-learn pipeline whose ONNX conversion gives the same answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import Bundle
from edgeinfer.zoo import ZooError, fraud

pytest.importorskip("skl2onnx")


def test_transactions_are_imbalanced_with_named_features() -> None:
    x_train, y_train, _, y_test = fraud.load_data()
    assert x_train.shape[1] == len(fraud.FEATURES) == 12
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.015 <= y_train.mean() <= 0.05
    assert abs(y_train.mean() - y_test.mean()) < 0.005  # stratified
    col = {name: i for i, name in enumerate(fraud.FEATURES)}
    assert set(np.unique(x_train[:, col["used_chip"]])) <= {0.0, 1.0}
    assert x_train[:, col["amount_usd"]].min() > 0
    assert np.array_equal(fraud.load_data()[3], y_test)


def test_bundle_outputs_plain_tensors_and_metrics(fraud_bundle: Bundle) -> None:
    m = fraud_bundle.manifest
    assert [(s.name, s.dtype) for s in m.inputs] == [("features", "float32")]
    assert [(s.name, s.dtype) for s in m.outputs] == [
        ("label", "int64"),
        ("probabilities", "float32"),
    ]
    assert m.labels == ("legitimate", "fraud")
    assert m.metrics["accuracy"] >= 0.95
    assert m.metrics["roc_auc"] >= 0.9
    assert 0.0 < m.metrics["f1"] <= 1.0
    with edgeinfer.load(fraud_bundle.path) as model:
        assert fraud_bundle.check_golden(model) == []


def test_onnx_matches_sklearn_predict_proba(fraud_bundle: Bundle) -> None:
    x_train, y_train, x_test, _ = fraud.load_data()
    pipeline = fraud.train(x_train, y_train)  # same seed: the same model the bundle holds
    with edgeinfer.load(fraud_bundle.path) as model:
        out = model.predict(x_test)
    want = pipeline.predict_proba(x_test)
    np.testing.assert_allclose(out["probabilities"], want, atol=1e-5)
    assert np.mean(out["label"] == pipeline.predict(x_test)) >= 0.999


def test_logistic_regression_variant_converts_too(tmp_path: Path) -> None:
    x_train, y_train, x_test, _ = fraud.load_data(n=2000)
    pipeline = fraud.train(x_train, y_train, classifier="logreg")
    path = fraud.export_onnx(pipeline, tmp_path / "logreg.onnx")
    with edgeinfer.load(path, providers=["cpu"]) as model:
        probs = model.predict(x_test)["probabilities"]
    np.testing.assert_allclose(probs, pipeline.predict_proba(x_test), atol=1e-5)
    with pytest.raises(ZooError, match="unknown classifier"):
        fraud.train(x_train, y_train, classifier="svm")  # type: ignore[arg-type]
