"""``edgeinfer demo``: the main job on embedded defaults, no outside services."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    workdir: Path | None = typer.Option(
        None, help="Where to write bundles and logs (default: a fresh temporary directory)."
    ),
    stage: list[str] = typer.Option(
        [], "--stage", help="Run only these stages (e.g. --stage foundation)."
    ),
    fast: bool = typer.Option(False, help="Fewer epochs and repeats (for quick checks)."),
    skip_generate: bool = typer.Option(
        False, "--skip-generate", help="Leave out the predictive-text (generation) stage."
    ),
) -> None:
    """Build a real model, bundle it, and run the whole edgeinfer loop on this machine."""
    import tempfile

    from edgeinfer.demo import run_demo

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="edgeinfer-demo-"))
    run_demo(workdir, stages=stage or None, fast=fast, skip=["generate"] if skip_generate else None)
    typer.echo(f"demo artifacts are in {workdir}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
