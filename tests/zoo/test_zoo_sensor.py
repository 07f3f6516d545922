"""The vibration autoencoder: trained on normal windows, it flags machine faults."""

from __future__ import annotations

import numpy as np
import pytest

import edgeinfer
from edgeinfer import Bundle
from edgeinfer.zoo import ZooError, sensor

pytestmark = pytest.mark.slow  # trains a model (a few seconds)


def test_windows_look_like_a_3_axis_accelerometer() -> None:
    x = sensor.generate(16, None, seed=0)
    assert x.shape == (16, 3, 128) and x.dtype == np.float32
    z = sensor.VibrationConfig().gravity_axis
    assert np.allclose(x[:, z].mean(), 1.0, atol=0.05)  # gravity on z
    assert np.abs(x[:, 0].mean()) < 0.05
    bearing = sensor.generate(16, "bearing", seed=0)
    assert np.abs(np.diff(bearing[:, 0])).mean() > np.abs(np.diff(x[:, 0])).mean()  # impacts
    with pytest.raises(ZooError, match="unknown fault"):
        sensor.generate(1, "rust")


def test_bundle_detects_anomalies(sensor_bundle: Bundle) -> None:
    m = sensor_bundle.manifest
    assert [s.name for s in m.outputs] == ["reconstruction", "score"]
    assert m.metrics["roc_auc"] >= 0.9
    assert m.metrics["f1"] >= 0.8
    threshold = m.metrics["threshold"]
    # Fresh data the model never saw (another seed), scored through the public API.
    data = sensor.load_data(seed=7, n_train=10, n_val=10)
    with edgeinfer.load(sensor_bundle.path) as model:
        assert sensor_bundle.check_golden(model) == []
        out = model.predict(data.x_test)
    assert out["reconstruction"].shape == data.x_test.shape
    scores = out["score"]
    assert sensor.roc_auc(scores, data.y_test) >= 0.9
    normal = scores[data.y_test == 0]
    assert np.mean(normal > threshold) <= 0.05  # few false alarms
    faults = np.array(data.fault_test)
    for fault in sensor.FAULTS:
        assert np.median(scores[faults == fault]) > np.median(normal), fault


def test_reconstruction_is_close_for_normal_windows(sensor_bundle: Bundle) -> None:
    x = sensor.generate(32, None, seed=11)
    with edgeinfer.load(sensor_bundle.path) as model:
        r = model.predict(x)["reconstruction"]
    noise = sensor.VibrationConfig().noise_g
    assert float(np.sqrt(np.mean((r - x) ** 2))) < 3 * noise  # in g


def test_roc_auc_matches_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(labels + rng.normal(0, 1.0, 500), 1)  # with ties
    assert sensor.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))
    with pytest.raises(ZooError, match="both"):
        sensor.roc_auc(scores, np.zeros(500))
