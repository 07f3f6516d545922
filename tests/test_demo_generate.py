"""The predictive-text demo stage runs end to end (fast mode): local completions while the
link is down, offloaded ones while it is good, finished on the device when it drops, and
every completion is the device's own text; ``--skip-generate`` leaves it out."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from edgeinfer.demo import run_demo


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_generate_demo_stage(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    ctx = run_demo(tmp_path, stages=["generate"], console=console, fast=True)
    phases = ctx.artifacts["generate_phases"]
    assert ctx.artifacts["generate_failed"] == 0
    assert ctx.artifacts["generate_same"] is True
    assert set(phases) == {"link down", "link good", "link drops"}
    assert set(phases["link down"]) == {"local"}
    assert set(phases["link good"]) == {"remote"}
    assert phases["link drops"].get("fallback", 0) >= 1
    assert "finished on the device after the link dropped, 0 failed" in console.export_text()


def test_skip_leaves_the_stage_out(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    ctx = run_demo(tmp_path, stages=["generate"], skip=["generate"], console=console)
    assert "generate_phases" not in ctx.artifacts
    assert console.export_text() == ""
