"""The ``edgeinfer`` command line: one module per command, registered here.

Each command module defines ``register(app)`` and imports its heavy dependencies inside
the command, so ``edgeinfer --help`` stays fast. Errors edgeinfer raises on purpose are
printed as one red line (exit code 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from edgeinfer.errors import EdgeInferError

__all__ = ["COMMANDS", "build_app", "main"]

COMMANDS: list[str] = [
    "edgeinfer.cli.inspect",
    "edgeinfer.cli.run",
    "edgeinfer.cli.bench",
    "edgeinfer.cli.bundle",
    "edgeinfer.cli.demo",
    "edgeinfer.cli.split",
    "edgeinfer.cli.keys",
    "edgeinfer.cli.publish",
    "edgeinfer.cli.agent",
    "edgeinfer.cli.serve",
    "edgeinfer.cli.netem",
    "edgeinfer.cli.offload_bench",
    "edgeinfer.cli.optimize",
    "edgeinfer.cli.convert",
]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="edgeinfer",
        help="Run machine-learning models where the data is: optimize, ship, run, offload.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode="rich",
    )

    @app.callback()
    def _root(
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    ) -> None:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )

    for module in COMMANDS:
        importlib.import_module(module).register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, prog_name="edgeinfer")
    except EdgeInferError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
