"""Shared fixtures: tiny ONNX models built on the fly (builders in onnx_builders.py), and
the demo's tiny language model (edgeinfer.demo._tiny_lm), trained and built once.

The language model's build (a few seconds of training, then onnxruntime-genai's model
builder in a child process) is cached under the system's temporary directory, keyed by the
hash of its recipe, so a second run starts at once; a changed recipe builds afresh.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeinfer.bundle import Bundle
from edgeinfer.generate import GenerativeModel, create_bundle
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


GOLDEN = ("the quick brown", "edge devices run")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The tiny model's onnxruntime-genai directory (model.onnx, genai_config.json, ...)."""
    from edgeinfer.demo._tiny_lm import model_dir

    return model_dir(Path(tempfile.gettempdir()) / "edgeinfer-tests")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("tiny-bundle") / "tiny-llm"
    return create_bundle(
        tiny_dir,
        out,
        name="tiny-llm",
        golden_prompts=GOLDEN,
        golden_max_tokens=12,
        quantization={"precision": "fp32"},
    )


@pytest.fixture(scope="session")
def tiny(tiny_bundle: Bundle) -> GenerativeModel:
    from edgeinfer.generate import load

    return load(tiny_bundle.path, threads=1)
