"""Model builders importable from tests (conftest fixtures wrap the common ones)."""

from __future__ import annotations

from pathlib import Path

from conftest import make_mlp


def make_other_mlp(path: Path) -> Path:
    """Same signature as the default MLP, different weights: golden samples disagree."""
    return make_mlp(path, seed=7)
