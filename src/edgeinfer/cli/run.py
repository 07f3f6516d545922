"""``edgeinfer run PATH --input FILE``: one inference from a file, on this device."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text


def run(
    path: Path = typer.Argument(..., help="Bundle directory, packed .tar, or .onnx/.tflite file."),
    input: Path = typer.Option(..., "--input", "-i", help="Inputs: .npy, .npz or .json."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write outputs to .npz, .npy or .json."
    ),
    providers: str = typer.Option("auto", help="'auto' or a list such as 'cuda,cpu'."),
    threads: int | None = typer.Option(None, help="Intra-op threads (default: runtime's)."),
) -> None:
    """Run a model once on inputs read from a file and show or save the outputs."""
    import time

    import numpy as np

    from edgeinfer.cli._common import read_inputs, write_outputs
    from edgeinfer.runtime.model import load

    plist = "auto" if providers == "auto" else [p.strip() for p in providers.split(",")]
    model = load(path, providers=plist, threads=threads)
    inputs = read_inputs(input)
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
        table.add_column(col)
    labels = model.bundle.manifest.labels if model.bundle is not None else None
    for name, value in outputs.items():
        preview = np.array2string(value.ravel()[:8], precision=4, separator=", ")
        if value.size > 8:
            preview = preview[:-1] + ", ...]"
        table.add_row(Text(name), str(value.dtype), Text(str(list(value.shape))), Text(preview))
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
