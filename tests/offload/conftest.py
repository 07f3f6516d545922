"""Real servers on loopback for the offloading tests: ``edgeinfer serve`` in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from offload_helpers import Served, mlp, serve_repository, two_output_mlp

import edgeinfer
from edgeinfer.runtime import Model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    mlp(root / "mlp" / "1" / "model.onnx")
    two_output_mlp(root / "two" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[Served]:
    """An open server (no tokens) speaking REST and gRPC."""
    with serve_repository(repo) as s:
        yield s


@pytest.fixture(scope="module")
def guarded(repo: Path) -> Iterator[Served]:
    """A server that wants a bearer token, with an admin token to unload models."""
    with serve_repository(repo, tokens=("secret",), admin_tokens=("admin",)) as s:
        yield s


@pytest.fixture(scope="module")
def local(repo: Path) -> Iterator[Model]:
    """The same model as the server's ``mlp``, loaded on the device."""
    with edgeinfer.load(repo / "mlp" / "1" / "model.onnx") as m:
        yield m


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
