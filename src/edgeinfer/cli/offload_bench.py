"""``edgeinfer offload-bench``: sweep placement policies over emulated networks and devices.

::

    edgeinfer offload-bench --quick
    edgeinfer offload-bench --model digits --rtt 1ms,100ms --rate 1mbit,100mbit --slowdown 1,16

An edge server runs in a child process behind the network emulator; for every condition
the model runs always locally, always remotely and under each policy, interleaved. Prints
a table, writes the results as JSON and a plot.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def offload_bench(
    model: list[str] = typer.Option(
        ["digits", "minilm"],
        "--model",
        "-m",
        help="'digits', 'minilm' or an .onnx file (repeatable).",
    ),
    rtt: str = typer.Option("1ms,20ms,100ms,300ms", help="Round-trip times, comma separated."),
    rate: str = typer.Option("1mbit,10mbit,100mbit", help="Bandwidths, comma separated."),
    slowdown: str = typer.Option("1,4,16", help="Device slowdowns (emulated), comma separated."),
    policies: str = typer.Option("latency,energy", help="Policies to compare."),
    rounds: int = typer.Option(6, min=1, help="Interleaved rounds per condition."),
    seq_len: int = typer.Option(32, min=1, help="MiniLM sequence length."),
    quick: bool = typer.Option(
        False, "--quick", help="A small grid: 2 RTTs x 2 rates x 2 slowdowns."
    ),
    out: Path = typer.Option(Path("offload-bench"), help="Directory for the JSON and the plot."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Compare placement policies over a grid of network and device conditions."""
    from rich.console import Console
    from rich.table import Table

    from edgeinfer.netem import parse_duration, parse_rate
    from edgeinfer.offload.sweep import Condition, plot_grid, sweep, workload

    if quick:
        rtt, rate, slowdown, rounds = "1ms,100ms", "1mbit,100mbit", "1,16", min(rounds, 3)
    conditions = [
        Condition(parse_duration(r, "rtt"), parse_rate(b, "rate"), float(s))
        for r in _split(rtt)
        for b in _split(rate)
        for s in _split(slowdown)
    ]
    console = Console(stderr=as_json)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    loads = [workload(m, seq_len=seq_len) for m in model]
    names = _split(policies)
    with console.status("sweeping...") as status:

        def progress(r: object) -> None:
            status.update(f"sweeping... {getattr(r, 'workload', '')} done with a condition")

        results = sweep(loads, conditions, names, rounds, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    data = [r.to_dict() for r in results]
    (out / "offload_bench.json").write_text(json.dumps(data, indent=1) + "\n")
    plot = plot_grid(results, out / "offload_bench.png", "edgeinfer offload-bench")
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    table = Table(title="mean latency (ms); ratio to the oracle (the better static placement)")
    for col in ("model", "rtt / rate / device", "local", "remote", *names, "oracle"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        cells = [f"{r.mean_ms[n]:.1f} ({r.ratio[n]:.2f})" for n in ("local", "remote", *names)]
        cond = f"{r.rtt_ms:g}ms / {r.rate_mbit or 0:g}Mbit / {r.slowdown:g}x"
        table.add_row(r.workload, cond, *cells, r.oracle)
    console.print(table)
    worst = max(results, key=lambda r: max(r.ratio[n] for n in names))
    console.print(
        f"worst policy/oracle ratio: {max(worst.ratio[n] for n in names):.2f} "
        f"({worst.workload}, {worst.rtt_ms:g} ms, {worst.rate_mbit or 0:g} Mbit/s, "
        f"{worst.slowdown:g}x); results in {out / 'offload_bench.json'}, plot {plot}"
    )


def register(app: typer.Typer) -> None:
    app.command("offload-bench")(offload_bench)
