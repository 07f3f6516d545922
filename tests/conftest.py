"""Shared fixtures: tiny ONNX models built on the fly (builders in onnx_builders.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from onnx_builders import make_mlp, make_two_input


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def two_input_path(tmp_path: Path) -> Path:
    return make_two_input(tmp_path / "two.onnx")


@pytest.fixture
def make_model() -> Callable[..., Path]:
    return make_mlp
