"""A model repository's directories: valid names and versions, what a version directory
loads from, the model's ``config.json``, and the fingerprint that tells a changed version.

The layout (Triton's) is drawn in :mod:`edgeinfer.serve.repository`, which loads, watches and
controls what is found here. Names and versions from requests are checked here too, so no
request ever names a path.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from edgeinfer.bundle import MANIFEST_FILE
from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import BadRequest, ModelLoadError

__all__ = [
    "MODEL_CONFIG",
    "MODEL_FILES",
    "NAME",
    "VERSION",
    "Fingerprint",
    "check_model_name",
    "check_version",
    "fingerprint",
    "model_batch_config",
    "version_source",
]


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION = re.compile(r"^[0-9]{1,18}$")
MODEL_FILES = ("model.onnx", "model.tflite")
MODEL_CONFIG = "config.json"


Fingerprint = tuple[tuple[str, int, int], ...]


def check_model_name(name: str) -> str:
    """A model name from a request, or :class:`BadRequest` (no path characters, ever)."""
    if not NAME.match(name):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise BadRequest(
            f"model name {shown!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '\\' or '..')"
        )
    return name


def check_version(version: str | None) -> int | None:
    """A model version from a request (digits), ``None`` when not given."""
    if version is None or version == "":
        return None
    if not VERSION.match(version):
        shown = version if len(version) <= 32 else version[:32] + "..."
        raise BadRequest(f"model version {shown!r} is not valid: expected a version number")
    return int(version)


def fingerprint(path: Path) -> Fingerprint:
    """Name, size and mtime of each file of a version directory (and of the model's
    ``config.json``): what tells a version that changed on disk."""
    items = []
    config = path.parent / MODEL_CONFIG
    if config.is_file():  # a changed model config reloads every version
        st = config.stat()
        items.append((f"../{MODEL_CONFIG}", st.st_size, st.st_mtime_ns))
    for f in sorted(path.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue  # staging files of a bundle being written are dot-files
        st = f.stat()
        items.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(items)


def model_batch_config(model_dir: Path, default: BatchConfig) -> BatchConfig:
    """The model's ``config.json`` over the server's batching defaults."""
    path = model_dir / MODEL_CONFIG
    if not path.is_file():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        known = {f.name for f in dataclasses.fields(BatchConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {sorted(known)}")
        return dataclasses.replace(default, **data)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: invalid model config: {exc}") from None


def version_source(path: Path) -> Path | None:
    """What to load from a version directory: the bundle dir or the bare model file."""
    if (path / MANIFEST_FILE).is_file():
        return path
    for name in MODEL_FILES:
        if (path / name).is_file():
            return path / name
    return None
