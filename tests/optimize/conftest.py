"""Fixtures for the optimize tests: the digits CNN (trained once, cached) and its data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from edgeinfer import zoo

    return zoo.digits.load_data()


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    """The trained digits CNN as an ONNX file (pixels [N,1,8,8] -> logits [N,10])."""
    from edgeinfer import zoo

    return zoo.digits.model_path()


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeinfer import zoo

    return zoo.digits.build(tmp_path_factory.mktemp("bundles") / "digits-cnn").path
