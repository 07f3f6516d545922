"""The digits CNN: real data, real training, ONNX export that matches torch, a cached build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import Bundle
from edgeinfer.zoo import ZooError, digits


def test_load_data_is_a_deterministic_stratified_split() -> None:
    x_train, y_train, x_test, y_test = digits.load_data()
    assert x_train.shape[1:] == (1, 8, 8) and x_test.shape[1:] == (1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert len(x_train) + len(x_test) == 1797
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    # every digit appears in the held-out set in about its overall share
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 40
    again = digits.load_data()
    assert np.array_equal(again[2], x_test) and np.array_equal(again[3], y_test)
    other = digits.load_data(seed=1)
    assert not np.array_equal(other[3], y_test)


@pytest.mark.slow  # trains the network unless the user cache has it
def test_bundle_reaches_95_percent_held_out(digits_bundle: Bundle) -> None:
    m = digits_bundle.manifest
    assert m.name == "digits-cnn"
    assert m.labels == tuple("0123456789")
    assert m.inputs[0].name == "pixels" and m.inputs[0].shape == ("batch", 1, 8, 8)
    assert m.outputs[0].name == "logits" and m.outputs[0].shape[1] == 10
    assert m.metrics["accuracy"] >= 0.95
    assert 20_000 <= m.metrics["params"] <= 100_000
    assert m.provenance["recipe"]["trainer"] == "edgeinfer.zoo.digits"
    # measured again here, through the public API, on the held-out images
    _, _, x_test, y_test = digits.load_data()
    with edgeinfer.load(digits_bundle.path) as model:
        assert digits_bundle.check_golden(model) == []
        logits = model.predict(x_test)["logits"]
    assert float(np.mean(logits.argmax(1) == y_test)) >= 0.95


@pytest.mark.slow  # imports torch and trains for two epochs
def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = digits.train(epochs=2, seed=3)
    path = digits.export_onnx(module, tmp_path / "cnn.onnx")
    _, _, x_test, _ = digits.load_data()
    with torch.no_grad():
        want = module(torch.from_numpy(x_test)).numpy()
    with edgeinfer.load(path, providers=["cpu"]) as model:
        got = model.predict({"pixels": x_test})["logits"]  # batch 450: the batch axis is dynamic
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_network_has_named_layers_to_cut_between() -> None:
    pytest.importorskip("torch")
    names = [name for name, _ in digits.make_cnn().named_children()]
    assert names[:3] == ["conv1", "bn1", "relu1"] and names[-1] == "fc2"
    student = digits.make_cnn(width=4)
    assert sum(p.numel() for p in student.parameters()) < 10_000


@pytest.mark.slow  # trains the network unless the user cache has it
def test_second_build_reuses_the_cached_model(digits_bundle: Bundle, tmp_path: Path) -> None:
    cached = digits.model_path()
    stamp = cached.stat().st_mtime_ns
    again = digits.build(tmp_path / "again", version=2)
    assert cached.stat().st_mtime_ns == stamp  # not retrained, not rewritten
    assert again.version == 2
    assert again.manifest.model.sha256 == digits_bundle.manifest.model.sha256
    assert again.manifest.metrics["accuracy"] == digits_bundle.manifest.metrics["accuracy"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: digits.load_data(test_size=1.5), "test_size"),
        (lambda: digits.train(epochs=0), "epochs"),
        (lambda: digits.make_cnn(width=0), "width"),
    ],
)
def test_bad_arguments_say_what_was_expected(call: object, match: str) -> None:
    pytest.importorskip("torch")
    with pytest.raises(ZooError, match=match):
        call()  # type: ignore[operator]
