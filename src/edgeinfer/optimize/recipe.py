"""Recipes: named sequences of passes, applied one after another.

A :class:`Recipe` is what a candidate *is* ("graph, then dynamic INT8 per channel"); the
winning one is recorded in the bundle's manifest (``provenance.recipe``) so anyone can see
and repeat how a shipped model was made. :func:`apply` runs the steps, reusing the output
of a shared prefix (every quantization candidate starts from the same graph-optimized
model, which is made once).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.optimize.passes import run_pass
from edgeinfer.optimize.passes.base import config_to_dict

__all__ = ["Applied", "Recipe", "Step", "apply"]


@dataclass(frozen=True)
class Step:
    """One pass with its config."""

    pass_name: str
    config: Any

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, **config_to_dict(self.config)}


@dataclass(frozen=True)
class Recipe:
    """A candidate's name, description and steps."""

    name: str
    steps: tuple[Step, ...]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True)
class Applied:
    """The model a recipe produced, each step's info, and the time it took."""

    path: Path
    infos: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    seconds: float = 0.0


def _key(steps: tuple[Step, ...]) -> str:
    text = json.dumps([s.to_dict() for s in steps], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply(
    recipe: Recipe,
    model: Path,
    workdir: Path,
    cache: MutableMapping[str, Applied] | None = None,
) -> Applied:
    """Run ``recipe`` on ``model``; files go to ``workdir``. ``cache`` shares prefixes."""
    cache = {} if cache is None else cache
    start = time.perf_counter()
    current = Path(model)
    infos: list[dict[str, Any]] = []
    for i in range(len(recipe.steps)):
        prefix = recipe.steps[: i + 1]
        key = _key(prefix)
        hit = cache.get(key)
        if hit is None:
            out = workdir / f"{key}.onnx"
            result = run_pass(prefix[-1].pass_name, current, prefix[-1].config, out)
            hit = Applied(result.path, (*infos, dict(result.info)))
            cache[key] = hit
        current = hit.path
        infos = list(hit.infos)
    return Applied(current, tuple(infos), time.perf_counter() - start)
