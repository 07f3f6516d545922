"""Helpers shared by CLI commands: reading input files, writing outputs, parsing options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import InputError

__all__ = ["parse_dims", "read_inputs", "write_outputs"]


def read_inputs(path: Path) -> Any:
    """Inputs from ``.npy`` (one array), ``.npz`` (name -> array) or ``.json``.

    JSON is either ``{"name": nested list, ...}`` or one nested list for a one-input model.
    """
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "inputs" in data and isinstance(data["inputs"], dict):
                data = data["inputs"]
            return data
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read inputs ({exc})") from None
    raise InputError(f"{path}: unsupported input file {suffix!r}; expected .npy, .npz or .json")


def write_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        np.savez(path, **outputs)  # type: ignore[arg-type]
    elif suffix == ".npy":
        if len(outputs) != 1:
            raise InputError(f"{path}: the model has {len(outputs)} outputs; write .npz or .json")
        np.save(path, next(iter(outputs.values())))
    elif suffix == ".json":
        path.write_text(json.dumps({k: v.tolist() for k, v in outputs.items()}) + "\n")
    else:
        raise InputError(f"{path}: unsupported output file {suffix!r}; use .npz, .npy or .json")


def parse_dims(values: list[str] | None) -> dict[str, int]:
    """``["sequence=128", "batch=4"]`` -> ``{"sequence": 128, "batch": 4}``."""
    dims: dict[str, int] = {}
    for item in values or []:
        name, sep, size = item.partition("=")
        if not sep or not size.strip().isdigit() or int(size) <= 0:
            raise InputError(
                f"--dim {item!r}: expected SYMBOL=SIZE with SIZE > 0, e.g. sequence=128"
            )
        dims[name.strip()] = int(size)
    return dims
