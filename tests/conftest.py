"""Shared fixtures: tiny ONNX models built on the fly (builders in onnx_builders.py)."""

from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="session")
def ppocr_models() -> Path:
    """PP-OCR det/cls/rec exported from Paddle (``?`` dims, weights as Constant nodes),
    shipped in rapidocr-onnxruntime (installed with --no-deps: only the .onnx files are used)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr-onnxruntime is not installed (pip install --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not (path / "ch_ppocr_mobile_v2.0_cls_infer.onnx").is_file():
        pytest.skip(f"{path}: PP-OCR models missing")
    return path
