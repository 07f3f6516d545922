"""Plumbing shared by the example models: lazy optional imports, the zoo cache, atomic writes.

Every example model keeps what is slow to make (a trained network, an ONNX export) in
``cache_dir()/zoo/``; files there are written to a temporary name in the same directory and
moved into place with ``os.replace``, so a crash or two processes building at once never
leave a half-written model behind.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeinfer._atomic import replacing
from edgeinfer.bundle import cache_dir
from edgeinfer.errors import EdgeInferError, MissingDependencyError

__all__ = [
    "MAX_IR_VERSION",
    "ZooError",
    "atomic_write",
    "package_dir",
    "read_json",
    "require",
    "save_onnx",
    "write_json",
    "zoo_cache",
]

# ONNX IR version written into exported models: new enough for opset 21, old enough for every
# onnxruntime edgeinfer supports (recent onnx writes IR 11+ by default, which older runtimes
# refuse to load).
MAX_IR_VERSION = 10


class ZooError(EdgeInferError):
    """An example model could not be built (export mismatch, missing tool, bad argument)."""


def require(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, extra, purpose) from exc


def package_dir(module: str, package: str, extra: str, purpose: str) -> Path:
    """The directory of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingDependencyError(package, extra, purpose)
    return Path(locations[0])


def zoo_cache(*parts: str) -> Path:
    """``cache_dir()/zoo/<parts...>``, created if missing."""
    path = cache_dir().joinpath("zoo", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    with replacing(path, suffix=".tmp") as tmp:
        write(tmp)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    """A cached JSON object, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_onnx(model: Any, path: Path) -> Path:
    """Save an ``onnx.ModelProto`` atomically, capping its IR version at :data:`MAX_IR_VERSION`.

    The model is checked with ``onnx.checker`` first; weights stay inside the one file.
    """
    import onnx

    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model)
    return atomic_write(path, lambda tmp: onnx.save_model(model, os.fspath(tmp)))
