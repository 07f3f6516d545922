"""``edgeinfer demo``: the whole loop on embedded defaults, one stage per part.

Each stage is a module with ``TITLE`` and ``run(ctx)``; stages share what they built
through ``ctx.artifacts`` (the foundation stage leaves the digits bundle and held-out data
there for the stages after it). Nothing reaches outside this machine: models are trained
or taken from installed packages, servers bind to 127.0.0.1.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["STAGES", "DemoContext", "run_demo"]

# In the order they run; later parts of edgeinfer append theirs.
STAGES: list[str] = [
    "edgeinfer.demo.foundation",
    "edgeinfer.demo.optimize",
    "edgeinfer.demo.serve",
    "edgeinfer.demo.deliver",
    "edgeinfer.demo.split",
    "edgeinfer.demo.offload",
    "edgeinfer.demo.generate",
    "edgeinfer.demo.fleet",
]


@dataclass
class DemoContext:
    """What every demo stage gets."""

    console: Console
    workdir: Path  # scratch space for bundles, repositories, logs
    fast: bool = False  # fewer epochs/repeats (tests use this)
    artifacts: dict[str, Any] = field(default_factory=dict)


def run_demo(
    workdir: Path,
    *,
    stages: list[str] | None = None,
    console: Console | None = None,
    fast: bool = False,
    skip: list[str] | None = None,
) -> DemoContext:
    """Run the ``stages`` named (default: all), less those in ``skip``."""
    ctx = DemoContext(console or Console(), Path(workdir), fast)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    wanted = STAGES if not stages else [s for s in STAGES if s.rsplit(".", 1)[-1] in stages]
    wanted = [s for s in wanted if s.rsplit(".", 1)[-1] not in (skip or ())]
    for name in wanted:
        module = importlib.import_module(name)
        start = time.perf_counter()
        ctx.console.rule(f"[bold]{module.TITLE}")
        module.run(ctx)
        ctx.console.print(f"[dim]{module.TITLE}: {time.perf_counter() - start:.1f} s[/]")
    return ctx
