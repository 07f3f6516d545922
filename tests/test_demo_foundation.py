"""The demo's first stage end to end (later stages are tested in their own areas)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from edgeinfer import Bundle
from edgeinfer.demo import STAGES, run_demo


def test_foundation_stage_builds_bundles_and_reports(tmp_path: Path) -> None:
    out = io.StringIO()
    ctx = run_demo(tmp_path, stages=["foundation"], console=Console(file=out, width=120), fast=True)
    text = out.getvalue()
    assert "held-out accuracy" in text and "golden sample: reproduced" in text
    assert "local latency" in text
    bundle = Bundle.open(ctx.artifacts["digits_bundle"])
    assert bundle.manifest.golden is not None
    assert ctx.artifacts["digits_accuracy"] >= 0.95


def test_every_stage_module_imports_and_has_a_title() -> None:
    import importlib

    for name in STAGES:
        module = importlib.import_module(name)
        assert module.TITLE and callable(module.run)
