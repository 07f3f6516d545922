"""``edgeinfer bench PATH``: cold start, latency percentiles, throughput and peak memory."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeinfer.cli._common import FALLBACK_HELP, PROVIDERS_HELP
from edgeinfer.runtime.bench import MIN_CALLS


def bench(
    path: Path = typer.Argument(
        ...,
        metavar="MODEL",
        help="Bundle directory, packed .tar, or .onnx/.tflite file.",
        show_default=False,
    ),
    batch: int = typer.Option(1, min=1, help="Size of a dynamic first (batch) axis."),
    dim: list[str] = typer.Option(
        [],
        "--dim",
        help="Size of a dynamic dim by symbol or INPUT.AXIS: --dim sequence=128, "
        "--dim x.2=48,x.3=320 (repeatable).",
    ),
    input: Path | None = typer.Option(None, "--input", "-i", help="Real inputs (.npy/.npz/.json)."),
    threads: int | None = typer.Option(None, help="Intra-op threads (default: runtime's)."),
    providers: str = typer.Option("auto", help=PROVIDERS_HELP),
    fallback: bool = typer.Option(False, "--fallback", help=FALLBACK_HELP),
    seconds: float = typer.Option(
        2.0,
        min=0.01,
        help=f"Time spent on timed calls: at least {MIN_CALLS} calls or this many seconds, "
        "whichever takes longer.",
    ),
    concurrency: int = typer.Option(0, min=0, help="Also measure throughput with N threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Measure a model on this machine.

    Random inputs need a size for every dynamic dim: the batch axis takes --batch, the
    others --dim (or time real inputs with --input). The shapes timed are shown.
    """
    from edgeinfer.cli._common import named_inputs, parse_dims, parse_providers, read_inputs, status
    from edgeinfer.runtime.bench import bench as run_bench

    plist = parse_providers(providers)
    inputs = None
    if input is not None:
        raw = read_inputs(input)
        inputs = raw if isinstance(raw, dict) else None
        if inputs is None:
            from edgeinfer.runtime.model import load

            with load(path, providers=plist, fallback=fallback) as m:
                inputs = m.validate(named_inputs(input, raw, [s.name for s in m.inputs]))
    console = Console(stderr=as_json)
    start = f"benchmarking {path.name}: at least {MIN_CALLS} calls or {seconds:g} s..."
    with status(console, start) as update:
        result = run_bench(
            path,
            batch=batch,
            dims=parse_dims(dim),
            inputs=inputs,
            threads=threads,
            providers=plist,
            fallback=fallback,
            min_seconds=seconds,
            concurrency=concurrency,
            progress=update,
        )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    title = f"{result.model} on {', '.join(result.providers)} (batch {result.batch})"
    table = Table(title=Text(title))
    table.add_column("measure", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    rows = [
        ("cold start (load + first inference)", f"{result.cold_start_s * 1e3:,.1f} ms"),
        ("  load", f"{result.load_s * 1e3:,.1f} ms"),
        ("  first inference", f"{result.first_inference_s * 1e3:,.1f} ms"),
        ("latency p50", f"{result.p50_ms:,.3f} ms"),
        ("latency p90", f"{result.p90_ms:,.3f} ms"),
        ("latency p99", f"{result.p99_ms:,.3f} ms"),
        ("throughput (serial)", f"{result.throughput_per_s:,.1f} samples/s"),
        ("timed calls", str(result.calls)),
        ("peak RSS (process)", f"{result.peak_rss_mb:.1f} MiB"),
    ]
    if result.concurrent_throughput_per_s is not None:
        rows.append(
            (
                f"throughput ({result.concurrency} threads)",
                f"{result.concurrent_throughput_per_s:,.1f} samples/s",
            )
        )
    for spec in result.inputs:
        rows.append((f"input {spec.name}", spec.describe()))
    for row in rows:
        table.add_row(*map(Text, row))  # names and shapes are not markup
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
