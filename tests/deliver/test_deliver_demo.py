"""The delivery demo stage: v1 then a last-layer fine-tune as a delta, on real digits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from edgeinfer.demo import run_demo


@pytest.mark.slow
def test_demo_stage_updates_by_delta(tmp_path: Path) -> None:
    out = io.StringIO()
    ctx = run_demo(tmp_path, stages=["deliver"], fast=True, console=Console(file=out, width=120))
    sizes = ctx.artifacts["deliver_bytes"]
    assert 0 < sizes["delta"] <= 0.05 * sizes["full"]
    text = out.getvalue()
    assert (
        "downloaded by the agent (delta)" in text and "hot swap of the running model: done" in text
    )
