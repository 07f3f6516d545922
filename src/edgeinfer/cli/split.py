"""``edgeinfer split MODEL --out DIR``: head and tail bundles of a model, profiled per cut.

Writes::

    DIR/split.json                       the profile (also inside every bundle)
    DIR/heads/<name>-head-<i>/           device-side bundles, one per cut that runs a head
    DIR/tails/<name>-tail-<i>/<version>/ server-side bundles: ``edgeinfer serve DIR/tails``

Remote-only has no head (cut 0: the tail is the whole model) and local-only no tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from edgeinfer.bundle import Bundle
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
        None,
        "--dim",
        help="Size of a dynamic dimension besides the batch, for the profile (the halves stay "
        "dynamic), by symbol or INPUT.AXIS as bench takes it: sequence=128, x.2=320,x.3=320; "
        "repeat it or separate with commas. Default: read off --inputs.",
    ),
    inputs: Path | None = typer.Option(
        None, "--inputs", "-i", help="Real inputs (.npy/.npz/.json); default: the golden sample."
    ),
    max_tensors: int = typer.Option(4, help="Most tensors allowed to cross an interior cut."),
    repeats: int = typer.Option(20, help="Timed runs per half (median is kept)."),
    threads: int = typer.Option(1, help="Intra-op threads while profiling."),
    list_only: bool = typer.Option(False, "--list", help="Only list the cut points."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="With --list: every cut's crossing tensors below the table."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the cut list (or the profile) as JSON, everything in it."
    ),
) -> None:
    """Split a model into head (device) and tail (edge server) bundles at its cut points."""
    from rich.console import Console

    from edgeinfer.bundle import Bundle
    from edgeinfer.cli._common import parse_dims, read_inputs
    from edgeinfer.errors import InputError
    from edgeinfer.split import cut_points, select_cuts
    from edgeinfer.split.compress import MODES
    from edgeinfer.split.graph import require_onnx
    from edgeinfer.split.package import write_split

    console = Console()
    say = Console(stderr=True) if as_json else console  # stdout stays one JSON document
    for flag, mode in (("--compress", compress), ("--compress-outputs", compress_outputs)):
        if mode is not None and mode not in MODES:
            raise InputError(f"{flag} {mode!r}: expected one of {', '.join(MODES)}")
    if model.is_file() and model.suffix.lower() != ".tar":
        require_onnx(model)  # before opening a TFLite file loads it into LiteRT
    source = Bundle.open(model)
    require_onnx(source.model_path)  # a bundle of a TFLite model
    feeds = read_inputs(inputs) if inputs is not None else None
    golden = source.golden() if feeds is None else None
    samples = golden.inputs if golden is not None else feeds  # sizes and measuring runs
    given = parse_dims(dim)
    where = str(inputs) if inputs is not None else "the golden sample"
    dims = _dims(source, given, samples, where)
    cuts = cut_points(source.model_path, dims=dims, max_tensors=max_tensors, inputs=samples)
    if len(cuts) <= 2:
        say.print(_no_cuts(source.name, cuts, max_tensors), soft_wrap=True)
    if list_only:
        if as_json:
            _print_json({"model": source.name, "dims": dims, "cuts": _cut_dicts(cuts)})
        elif len(cuts) > 2:
            _print_cuts(console, source.name, cuts, verbose=verbose)
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
        note=lambda line: say.print(line, soft_wrap=True, markup=False, highlight=False),
    )
    if as_json:
        _print_json(
            {
                "profile": result.profile.to_dict(),
                "profile_path": str(result.profile_path),
                "heads": {str(i): str(p) for i, p in result.heads.items()},
                "tails": {str(i): str(p) for i, p in result.tails.items()},
                "repository": str(result.repository),
            },
        )
        return
    _print_profile(console, result.profile)
    console.print(f"profile: {result.profile_path}", soft_wrap=True)
    console.print(f"device bundles: {out / 'heads'}", soft_wrap=True)
    console.print(
        f"server repository: {out / 'tails'}  (edgeinfer serve {out / 'tails'})", soft_wrap=True
    )


def _dims(source: Bundle, given: dict[str, int], feeds: Any, where: str) -> dict[str, int]:
    """``--dim`` sizes, the rest read off the real inputs (or the golden sample); a size
    that disagrees with the inputs is an error rather than a profile of other sizes."""
    from edgeinfer.errors import InputError
    from edgeinfer.split import input_dims
    from edgeinfer.split._inputs import canonical_dims
    from edgeinfer.split.graph import load_model

    if not given and feeds is None:
        return given
    model = load_model(source.model_path, weights=False)
    dims = canonical_dims(model, given, str(source.model_path))  # x.2 or its symbol
    if feeds is None:
        return dims
    found = input_dims(source.model_path, feeds)
    for spelled, size in given.items():
        (key,) = canonical_dims(model, {spelled: size}, str(source.model_path))
        if key in found and found[key] != size:
            named = key if key == spelled else f"{spelled} ({key})"
            raise InputError(
                f"--dim {spelled}={size} disagrees with {where}, where {named} is "
                f"{found[key]}; drop --dim to profile the inputs as they are"
            )
    return {**found, **dims}


def _no_cuts(name: str, cuts: list[Cut], max_tensors: int) -> str:
    nodes = cuts[-1].total_nodes
    why = (
        f"the graph has {nodes} node{'s' if nodes != 1 else ''}"
        if nodes < 2
        else f"every position between has more than --max-tensors {max_tensors} tensors crossing"
    )
    return (
        f"{name}: no cut points besides remote-only and local-only ({why}); "
        "it runs whole on one side"
    )


def kb(n: int) -> str:
    """Bytes as kB (1000 bytes), in at most 7 characters below 1 GB; a few bytes read
    0.01, not 0."""
    k = n / 1000
    if n == 0:
        return "0"
    if k >= 100:
        return f"{k:,.0f}"
    return f"{k:.1f}" if k >= 1 else f"{max(k, 0.01):.2f}"


def _table(
    title: str,
    columns: tuple[str, ...],
    rows: Sequence[tuple[str, ...]],
    names: str | None = None,
    width: int = 80,
) -> Table:
    """Numbers right-aligned and never cut (each column as wide as its widest cell, no
    vertical rules, two spaces between columns: 80 columns hold a profile whole); ``names``,
    a last column of tensor names, takes what ``width`` leaves and ends in an ellipsis."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True,
                  pad_edge=False, title_justify="left")  # fmt: skip
    used = 0
    for i, col in enumerate(columns):
        cells = max(len(col), *(len(r[i]) for r in rows)) if rows else len(col)
        table.add_column(col, justify="right", no_wrap=True, min_width=cells)
        used += cells + 2  # a space each side
    left = max(width - used - 2, len(names or ""))  # more, and rich drops whole columns
    if names is not None:
        table.add_column(names, no_wrap=True, max_width=left)
    for row in rows:
        if names is not None:
            row = (*row[:-1], _shorten(row[-1], left))
        table.add_row(*row)
    return table


def _shorten(cell: str, left: int) -> str:
    """``"3: a, b, c"`` in ``left`` characters: the count, then whole names only (the
    first always, as many more as fit), then ``…`` for the rest; a name cut in the
    middle cannot be searched for."""
    if len(cell) <= left:
        return cell
    count, _, rest = cell.partition(": ")
    names = rest.split(", ")
    out = f"{count}: {names[0]}"
    for name in names[1:]:
        if len(out) + len(name) + 5 > left:  # ", name" and room for ", …"
            break
        out += f", {name}"
    return f"{out}, …"


def _print_cuts(console: Console, name: str, cuts: list[Cut], *, verbose: bool = False) -> None:
    rows = [
        (str(c.index), str(c.position), c.kind, kb(c.bytes_per_sample),
         f"{len(c.tensors)}: {', '.join(c.tensors)}")
        for c in cuts
    ]  # fmt: skip
    cols = ("cut", "position", "kind", "kB/sample")
    title = f"{name}: {len(cuts)} cut points"
    console.print(_table(title, cols, rows, "crossing tensors", console.width))
    several = [c for c in cuts if len(c.tensors) > 1]
    if verbose:
        console.print("crossing tensors, every cut:", soft_wrap=True)
        for c in cuts:
            text = f"{c.index:>4}: {', '.join(c.tensors)}"
            console.print(text, soft_wrap=True, markup=False, highlight=False)
    elif several:
        console.print(
            f"several tensors cross {len(several)} of {len(cuts)} cuts: names with --verbose, "
            "all with --json",
            soft_wrap=True,
        )


def _cut_dicts(cuts: list[Cut]) -> list[dict[str, Any]]:
    return [{**c.to_dict(), "kind": c.kind, "bytes_per_sample": c.bytes_per_sample} for c in cuts]


def _print_json(data: dict[str, Any]) -> None:
    """One JSON document on stdout, never wrapped or styled (it is read by programs)."""
    import json
    import sys

    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _print_profile(console: Console, profile: SplitProfile) -> None:
    cols = (
        "cut", "kind", "up kB", "packed", "down kB", "packed", "head ms", "tail ms", "max err",
    )  # fmt: skip
    rows = [
        (
            str(c.index), c.kind, kb(c.bytes_up), "-" if c.packed_up is None else kb(c.packed_up),
            kb(c.bytes_down), "-" if c.packed_down is None else kb(c.packed_down),
            f"{c.head_ms:.2f}", f"{c.tail_ms:.2f}", f"{c.max_abs_error:.2g}",
        )
        for c in profile.cuts
    ]  # fmt: skip
    console.print(_table(f"{profile.model}: per-cut profile", cols, rows))
    console.print(
        f"batch {profile.batch}, compression {profile.compress or 'none'}, "
        f"output compression {profile.compress_outputs or 'none'}",
        soft_wrap=True,
    )
    console.print("kB: 1000 bytes; packed: as HTTP compression sends it", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("split")(split)
