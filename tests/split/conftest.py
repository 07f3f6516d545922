"""Fixtures for the split tests: the graphs (see ``split_models``) and real inputs.

nudenet's detector and the trained digits CNN are the real graphs; MiniLM is exercised by
a slow test. Inputs are real: held-out digits images and scikit-learn's sample photos.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from split_models import make_res_cnn


@pytest.fixture(scope="session")
def res_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_res_cnn(tmp_path_factory.mktemp("res_cnn") / "res_cnn.onnx")


@pytest.fixture(scope="session")
def digits_x() -> np.ndarray:
    """Real held-out digits images, float32 [32,1,8,8]."""
    from edgeinfer.zoo import digits

    return digits.load_data()[2][:32]


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits CNN (cached across runs), as an ONNX file."""
    from edgeinfer.zoo import digits

    bundle = digits.build(tmp_path_factory.mktemp("digits") / "bundle")
    return bundle.model_path


@pytest.fixture(scope="session")
def nudenet_path() -> Path:
    """nudenet's YOLOv8n-style detector (installed with --no-deps: only the .onnx is used)."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nudenet is not installed (pip install nudenet --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """Two real photographs (scikit-learn's samples), float32 [2,3,320,320] in [0,1]."""
    from sklearn.datasets import load_sample_image

    crops = []
    for name in ("china.jpg", "flower.jpg"):
        img = load_sample_image(name)[:320, 100:420]  # uint8 [320,320,3]
        crops.append(img.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.ascontiguousarray(np.stack(crops))
