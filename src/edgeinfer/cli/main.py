"""The ``edgeinfer`` command line: one module per command, registered here.

Each command module defines ``register(app)`` and imports its heavy dependencies inside
the command, so ``edgeinfer --help`` stays fast. Errors edgeinfer raises on purpose are
printed as one red line (exit code 2); anything else is a bug and keeps its traceback.
An error's text is printed as is, never read as rich markup: messages quote shapes such as
``[batch,3,64,64]``, which markup would swallow. Help is click's plain layout, which keeps
every option name whole at 80 columns (rich's boxed panels cut long ones).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

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
    "edgeinfer.cli.fleet",
    "edgeinfer.cli.serve",
    "edgeinfer.cli.netem",
    "edgeinfer.cli.offload_bench",
    "edgeinfer.cli.optimize",
    "edgeinfer.cli.convert",
    "edgeinfer.cli.generate",
]


def _keep_hyphenated_words_whole() -> None:
    """Wrap help text only at spaces: click's wrapper (and typer's copy of click) also
    breaks after a hyphen, which prints an option named in a help sentence as ``--token-``
    and ``file`` on two lines."""
    for name in ("typer._click._textwrap", "click._textwrap"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # a version without it wraps as it likes
            continue
        base = module.TextWrapper
        if getattr(base, "edgeinfer_whole_words", False):
            continue

        class WholeWords(base):  # type: ignore[misc, valid-type]
            edgeinfer_whole_words = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["break_on_hyphens"] = False
                super().__init__(*args, **kwargs)

        setattr(module, "TextWrapper", WholeWords)  # noqa: B010 (a module, typed loosely)


def build_app() -> typer.Typer:
    _keep_hyphenated_words_whole()
    app = typer.Typer(
        name="edgeinfer",
        help="Run machine-learning models where the data is: optimize, ship, run, offload.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,  # plain help: option names are never cut at 80 columns
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
    # Written to a file or pipe, stdout is block-buffered: progress printed with print()
    # would appear only at exit. One line at a time keeps logs live (rich flushes itself).
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and not stream.isatty():
            stream.reconfigure(line_buffering=True)
    app = build_app()
    try:
        app(args=argv, prog_name="edgeinfer")
    except EdgeInferError as exc:
        message = Text.assemble(("error:", "bold red"), " ", str(exc))
        Console(stderr=True, soft_wrap=True).print(message, highlight=False)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
