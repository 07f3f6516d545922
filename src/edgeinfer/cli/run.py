"""``edgeinfer run PATH --input FILE``: one inference from a file, on this device."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeinfer.cli._common import FALLBACK_HELP, PROVIDERS_HELP


def run(
    path: Path = typer.Argument(
        ...,
        metavar="MODEL",
        help="Bundle directory, packed .tar, or .onnx/.tflite file.",
        show_default=False,
    ),
    input: Path = typer.Option(..., "--input", "-i", help="Inputs: .npy, .npz or .json."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write outputs to .npz, .npy or .json."
    ),
    providers: str = typer.Option("auto", help=PROVIDERS_HELP),
    fallback: bool = typer.Option(False, "--fallback", help=FALLBACK_HELP),
    threads: int | None = typer.Option(None, help="Intra-op threads (default: runtime's)."),
) -> None:
    """Run a model once on inputs read from a file and show or save the outputs."""
    import time

    from edgeinfer.cli._common import (
        named_inputs,
        parse_providers,
        preview,
        read_inputs,
        write_outputs,
    )
    from edgeinfer.runtime.model import load

    model = load(path, providers=parse_providers(providers), threads=threads, fallback=fallback)
    inputs = named_inputs(input, read_inputs(input), [s.name for s in model.inputs])
    start = time.perf_counter()
    outputs = model.predict(inputs)
    elapsed = time.perf_counter() - start
    if output is not None:
        write_outputs(output, outputs)
    console = Console()
    # Names, labels and values are Text, not markup: "[cat]" or "[1,3]" must print as is.
    title = f"{model.name}: outputs ({elapsed * 1e3:.2f} ms on {model.providers[0]})"
    table = Table(title=Text(title))
    for col in ("name", "dtype", "shape", "values"):
        table.add_column(col, overflow="fold")  # a name is never cut short
    labels = model.bundle.manifest.labels if model.bundle is not None else None
    for name, value in outputs.items():
        shown = preview(value)
        table.add_row(Text(name), str(value.dtype), Text(str(list(value.shape))), Text(shown))
        if labels and value.ndim == 2 and value.shape[1] == len(labels):
            top = [labels[int(i)] for i in value.argmax(axis=1)[:16]]
            table.add_row(
                Text(f"{name} (argmax)"), "label", Text(str([value.shape[0]])), Text(", ".join(top))
            )
    console.print(table)
    if output is not None:
        console.print(f"outputs written to {output}", markup=False, highlight=False)
    model.close()


def register(app: typer.Typer) -> None:
    app.command("run")(run)
