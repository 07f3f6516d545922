"""The offloading demo stage runs end to end (fast mode) and never fails a prediction."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from edgeinfer.demo import run_demo


@pytest.mark.slow
def test_offload_demo_stage(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    ctx = run_demo(tmp_path, stages=["offload"], console=console, fast=True)
    phases = ctx.artifacts["offload_phases"]
    assert len(phases) == 5
    assert ctx.artifacts["offload_failed"] == 0
    assert all(sum(counts.values()) == 12 for counts in phases.values())
    assert "private request: local" in console.export_text()
