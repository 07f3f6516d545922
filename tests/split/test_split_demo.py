"""The split demo stage end to end (fast mode): the planner's cut follows the bandwidth,
on the detector ``make demo`` installs and on the network the stage builds without it."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from rich.console import Console

from edgeinfer.demo import DemoContext, run_demo
from edgeinfer.demo import split as stage


def by_link(chosen: list[tuple[str, int, str]]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for link, _cut, kind in chosen:
        kinds.setdefault(link, set()).add(kind)
    return kinds


def request_rows(text: str) -> list[str]:
    """The kinds in the request table's cut column, in order ("5 (split)" -> "split")."""
    table = text[text.index("the planner re-plans each request") :]
    return [kind for kind in ("remote", "split", "local") for _ in range(table.count(f"({kind})"))]


def test_split_demo_moves_the_cut_with_the_bandwidth(tmp_path: Path) -> None:
    # the detector ships in nudenet, which `make demo` installs (without its dependencies)
    assert importlib.util.find_spec("nudenet") is not None
    out = io.StringIO()
    ctx = run_demo(tmp_path, stages=["split"], console=Console(file=out, width=120), fast=True)
    chosen = ctx.artifacts["split_cuts"]
    kinds = by_link(chosen)
    assert set(kinds) == {"unlimited", "50mbit", stage.SLOW}
    # A photo on a 0.5 Mbit/s link: everything stays on the device.
    assert kinds[stage.SLOW] == {"local"}, chosen
    # As fast as loopback goes: the server takes (part of) the work.
    assert "local" not in kinds["unlimited"], chosen
    assert "detector: the cuts profiled" in out.getvalue()
    assert sorted(request_rows(out.getvalue())) == sorted(kind for _, _, kind in chosen)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_network_built_without_nudenet_is_split_too(tmp_path: Path) -> None:
    out = io.StringIO()
    ctx = DemoContext(Console(file=out, width=120), tmp_path, fast=True)
    setup = stage.scene_cnn(tmp_path)
    assert setup.inputs["images"].shape == (1, 3, stage.CNN_SIZE, stage.CNN_SIZE)
    stage.play(ctx, setup)
    chosen = ctx.artifacts["split_cuts"]
    kinds = by_link(chosen)
    assert set(kinds) == {"unlimited", "10mbit", stage.SLOW}
    assert kinds[stage.SLOW] == {"local"}, chosen
    assert "local" not in kinds["unlimited"], chosen
    text = out.getvalue()
    assert "scene-cnn: the cuts profiled" in text and "random weights" in text
    # the table shows the move: the server's part on the fast link, the device's on the slow
    assert {"local"} < set(request_rows(text))
