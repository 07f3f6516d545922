"""The split demo stage end to end (fast mode): the planner's cut follows the bandwidth."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from rich.console import Console

from edgeinfer.demo import run_demo


def test_split_demo_moves_the_cut_with_the_bandwidth(tmp_path: Path) -> None:
    # the detector ships in nudenet, which `make test` installs (without its dependencies)
    assert importlib.util.find_spec("nudenet") is not None
    out = io.StringIO()
    ctx = run_demo(tmp_path, stages=["split"], console=Console(file=out, width=120), fast=True)
    chosen = ctx.artifacts["split_cuts"]
    by_link: dict[str, set[str]] = {}
    for link, _cut, kind in chosen:
        by_link.setdefault(link, set()).add(kind)
    assert set(by_link) == {"unlimited", "50mbit", "2mbit"}
    # A photo on a 2 Mbit/s link: everything stays on the device.
    assert by_link["2mbit"] == {"local"}
    # As fast as loopback goes: the server takes (part of) the work.
    assert "local" not in by_link["unlimited"], chosen
    assert "the planner re-plans each request" in out.getvalue()
