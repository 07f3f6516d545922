"""mtcnn's three face-detection networks: subclassed Keras 3 models from a PyPI wheel.

mtcnn (corpus wheel, installed with ``--no-deps`` by the Makefile) defines PNet, RNet and
ONet as ``keras.Model`` subclasses whose ``build()`` records no input shapes, and ships their
weights as lz4-compressed joblib files. What its users hold is such an object: built, weights
set, never called. Keras refuses to export it as it is; the converters run it once on the
sample inputs and export it with their shapes (the batch axis left open).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from edgeinfer.convert import keras_to_onnx, keras_to_tflite
from edgeinfer.convert.tflite import run_tflite
from edgeinfer.errors import InputError

pytestmark = pytest.mark.slow  # TensorFlow's import and six conversions

# network, weights file, a sample batch shape (NHWC, as mtcnn feeds them)
NETWORKS = [
    ("pnet", "pnet.lz4", (2, 48, 64, 3)),
    ("rnet", "rnet.lz4", (3, 24, 24, 3)),
    ("onet", "onet.lz4", (3, 48, 48, 3)),
]


def _network(name: str, weights: str) -> Any:
    import importlib.util

    assert importlib.util.find_spec("mtcnn") is not None, "make .venv/.test-installed"
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet
    from mtcnn.utils.tensorflow import load_weights

    net = {"pnet": PNet, "rnet": RNet, "onet": ONet}[name]()
    net.build()
    net.set_weights(load_weights(weights))
    return net


@pytest.mark.parametrize(("name", "weights", "shape"), NETWORKS)
def test_mtcnn_networks_convert_to_onnx_and_tflite(
    tmp_path: Path, name: str, weights: str, shape: tuple[int, ...]
) -> None:
    net = _network(name, weights)
    rng = np.random.default_rng(1)
    sample = rng.uniform(-1, 1, shape).astype(np.float32)
    to_onnx = keras_to_onnx(net, tmp_path / f"{name}.onnx", inputs=[sample])
    to_tflite = keras_to_tflite(net, tmp_path / f"{name}.tflite", inputs=[sample])
    for report in (to_onnx, to_tflite):
        assert report.layout == "NHWC"
        assert report.cosine is not None and report.cosine > 0.9999

    # Held-out images, another batch size: the converted models against mtcnn's own network.
    images = rng.uniform(-1, 1, (shape[0] + 2, *shape[1:])).astype(np.float32)
    want = [np.asarray(t) for t in net(images)]
    session = ort.InferenceSession(str(to_onnx.path), providers=["CPUExecutionProvider"])
    got = session.run(list(to_onnx.output_names), {to_onnx.input_names[0]: images})
    by_shape = {w.shape: w for w in want}  # box regression and face score differ in shape
    for out in got:
        np.testing.assert_allclose(out, by_shape[out.shape], atol=1e-4)
    lite = run_tflite(to_tflite.path, {to_tflite.input_names[0]: images[:1]}, signature=True)
    for out in lite.values():
        np.testing.assert_allclose(
            out, {w.shape[1:]: w for w in want}[out.shape[1:]][:1], atol=1e-4
        )


def test_a_never_called_subclassed_model_without_samples_is_a_clear_error(
    tmp_path: Path,
) -> None:
    net = _network("rnet", "rnet.lz4")
    with pytest.raises(InputError, match="never been called.*sample inputs"):
        keras_to_onnx(net, tmp_path / "rnet.onnx")
    assert not (tmp_path / "rnet.onnx").exists()
