"""``edgeinfer split MODEL --out DIR``: head and tail bundles of a model, profiled per cut.

Writes::

    DIR/split.json                       the profile (also inside every bundle)
    DIR/heads/<name>-head-<i>/           device-side bundles, one per cut that runs a head
    DIR/tails/<name>-tail-<i>/<version>/ server-side bundles: ``edgeinfer serve DIR/tails``

Remote-only has no head (cut 0: the tail is the whole model) and local-only no tail.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from edgeinfer.split.graph import Cut
    from edgeinfer.split.profile import SplitProfile


def split(
    model: Path = typer.Argument(..., help="Bundle directory, packed .tar, or .onnx file."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directory to write into."),
    cut: int | None = typer.Option(
        None, "--cut", help="Write this cut (its index) and the two whole-model placements."
    ),
    max_cuts: int = typer.Option(
        8, "--max-cuts", help="Cuts to profile and write, extremes included (>= 2)."
    ),
    compress: str | None = typer.Option(
        None, "--compress", help="Quantize the tensors crossing the cut: uint8 or fp16."
    ),
    compress_outputs: str | None = typer.Option(
        None,
        "--compress-outputs",
        help="Quantize what the server returns (uint8 or fp16); the device restores it.",
    ),
    dim: list[str] | None = typer.Option(
        None, "--dim", help="Size of a dynamic dimension besides the batch, e.g. sequence=128."
    ),
    inputs: Path | None = typer.Option(
        None, "--inputs", "-i", help="Real inputs (.npy/.npz/.json); default: the golden sample."
    ),
    max_tensors: int = typer.Option(4, help="Most tensors allowed to cross an interior cut."),
    repeats: int = typer.Option(20, help="Timed runs per half (median is kept)."),
    threads: int = typer.Option(1, help="Intra-op threads while profiling."),
    list_only: bool = typer.Option(False, "--list", help="Only list the cut points."),
) -> None:
    """Split a model into head (device) and tail (edge server) bundles at its cut points."""
    from rich.console import Console

    from edgeinfer.bundle import Bundle
    from edgeinfer.cli._common import parse_dims, read_inputs
    from edgeinfer.errors import InputError
    from edgeinfer.split import cut_points, select_cuts
    from edgeinfer.split.compress import MODES
    from edgeinfer.split.package import write_split

    console = Console()
    for flag, mode in (("--compress", compress), ("--compress-outputs", compress_outputs)):
        if mode is not None and mode not in MODES:
            raise InputError(f"{flag} {mode!r}: expected one of {', '.join(MODES)}")
    source = Bundle.open(model)
    dims = parse_dims(dim)
    cuts = cut_points(source.model_path, dims=dims, max_tensors=max_tensors)
    if list_only:
        _print_cuts(console, source.name, cuts)
        return
    if out is None:
        raise InputError("--out DIR is required (or pass --list to only list the cuts)")
    if cut is not None:
        if not 0 <= cut < len(cuts):
            raise InputError(
                f"--cut {cut} is out of range: {source.name} has {len(cuts)} cuts "
                f"(0..{len(cuts) - 1}; list them with --list)"
            )
        # with the whole-model placements, so the profile can still be planned on
        chosen = sorted({cuts[0], cuts[cut], cuts[-1]}, key=lambda c: c.index)
    else:
        chosen = select_cuts(cuts, max_cuts)
    feeds = None
    if inputs is not None:
        feeds = read_inputs(inputs)
    result = write_split(
        source,
        chosen,
        out,
        inputs=feeds,
        dims=dims,
        compress=compress,
        compress_outputs=compress_outputs,
        repeats=repeats,
        threads=threads,
    )
    _print_profile(console, result.profile)
    console.print(f"profile: {result.profile_path}")
    console.print(f"device bundles: {out / 'heads'}")
    console.print(f"server repository: {out / 'tails'}  (edgeinfer serve {out / 'tails'})")


def _print_cuts(console: Console, name: str, cuts: list[Cut]) -> None:
    from rich.table import Table

    table = Table(title=f"{name}: {len(cuts)} cut points")
    for col in ("index", "position", "kind", "bytes/sample", "crossing tensors"):
        table.add_column(col)
    for c in cuts:
        shown = ", ".join(c.tensors[:3]) + (", ..." if len(c.tensors) > 3 else "")
        table.add_row(str(c.index), str(c.position), c.kind, f"{c.bytes_per_sample:,}", shown)
    console.print(table)


def _print_profile(console: Console, profile: SplitProfile) -> None:
    from rich.table import Table

    table = Table(
        title=f"{profile.model}: per-cut profile (batch {profile.batch}, "
        f"compression {profile.compress or 'none'}, "
        f"output compression {profile.compress_outputs or 'none'})"
    )
    cols = (
        "index", "kind", "tensors", "bytes up", "compressed", "bytes down", "compressed",
        "head ms", "tail ms", "max error",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for c in profile.cuts:
        packed = "-" if c.packed_up is None else f"{c.packed_up:,}"
        packed_down = "-" if c.packed_down is None else f"{c.packed_down:,}"
        table.add_row(
            str(c.index), c.kind, str(len(c.tensors)), f"{c.bytes_up:,}", packed,
            f"{c.bytes_down:,}", packed_down, f"{c.head_ms:.3f}", f"{c.tail_ms:.3f}",
            f"{c.max_abs_error:.2g}",
        )  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("split")(split)
