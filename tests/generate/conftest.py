"""The tiny language model (see _tiny.py), trained and built once per test run.

The build (a few seconds of training, then onnxruntime-genai's model builder in a child
process) is cached under the system's temporary directory, keyed by the hash of _tiny.py,
so a second run of these tests starts at once; a changed recipe builds afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from _tiny import build_tiny

from edgeinfer.bundle import Bundle
from edgeinfer.generate import GenerativeModel, create_bundle

GOLDEN = ("the quick brown", "edge devices run")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """The tiny model's onnxruntime-genai directory (model.onnx, genai_config.json, ...)."""
    recipe = hashlib.sha256((Path(__file__).parent / "_tiny.py").read_bytes()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "edgeinfer-tests" / f"tiny-llm-{recipe}"
    if (cache / "genai_config.json").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-llm.", dir=cache.parent))
    try:
        built = build_tiny(scratch / "model")
        with contextlib.suppress(OSError):  # another run finished first: the same model
            os.replace(built, cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


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
