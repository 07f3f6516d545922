"""The report's plot and the terminal table, on a search result made up here: crowded
points near the top of the metric's range, long candidate names, long reasons."""

from __future__ import annotations

import json
import os
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.evaluate import Evaluation
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.report import (
    break_name,
    candidate_table,
    clamp_axis,
    place_labels,
    write_report,
)

NAMES = (
    "graph",
    "dynamic-int8",
    "dynamic-int8-per-channel",
    "static-int8-minmax",
    "static-int8-entropy",
    "static-int8-percentile",
    "static-int8-percentile+exclude-sensitive",
)


def _result() -> SearchResult:
    rng = np.random.default_rng(0)
    base = Candidate(
        "original",
        status="ok",
        evaluation=Evaluation({"accuracy": 1.0}, 2.0, 2.1, 4_700_000),
        within_budget=True,
        drop=0.0,
    )
    cands = []
    for i, name in enumerate(NAMES):
        acc = 1.0 if i < 3 else float(0.995 + 0.001 * rng.random())
        ms = 2.0 + 0.02 * i  # all within a few percent: the labels would pile up
        ev = Evaluation({"accuracy": acc}, ms, ms, 1_200_000 + 10_000 * i)
        cands.append(Candidate(name, status="ok", evaluation=ev, within_budget=True, drop=0.0))
    cands.append(
        Candidate(
            "dynamic-int8-per-channel-unfused",
            status="skipped",
            reason="no transformer fusion to leave out",
        )
    )
    cands.append(
        Candidate(
            "fp16",
            status="failed",
            reason="static INT8 quantization wrote a model ONNX Runtime cannot load "
            '(This is an invalid model. In Node, ("n0", DequantizeLinear, "", -1)); keep the '
            "node it names in float (nodes_to_exclude) or try per_channel=False",
        )
    )
    return SearchResult(
        parse_metric("accuracy"), Budget.parse(0.01), "size", base, cands, cands[3], "chose it"
    )


def test_metric_axis_stays_in_range_and_labels_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    points = [(2.0 + 0.01 * i, 1.0 - 0.001 * (i % 3)) for i in range(8)]
    ax.scatter(*zip(*points, strict=True))
    ax.margins(y=0.08)
    ax.autoscale_view()
    assert ax.get_ylim()[1] > 1.0  # what matplotlib does on its own
    clamp_axis(ax, (0.0, 1.0))
    assert ax.get_ylim()[1] == 1.0
    fig.tight_layout()
    labels = place_labels(ax, points, fontsize=8)
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert [label.get_text() for label in labels] == [str(i) for i in range(8)]
    assert not [(a, b) for a, b in combinations(range(8), 2) if boxes[a].overlaps(boxes[b])]
    plt.close(fig)


def test_lower_is_better_metrics_never_go_below_zero() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.scatter([1.0, 2.0], [0.0, 0.001])
    ax.margins(y=0.2)
    ax.autoscale_view()
    clamp_axis(ax, parse_metric("mse").bounds)
    assert ax.get_ylim()[0] == 0.0
    plt.close(fig)


def test_report_files_with_crowded_candidates(tmp_path: Path) -> None:
    out = write_report(_result(), tmp_path / "r", title="crowded")
    assert (out / "report.png").stat().st_size > 10_000
    data = json.loads((out / "report.json").read_text())
    assert data["chosen"] == "static-int8-minmax"
    assert "per_channel=False" in (out / "report.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not 0o700


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("graph", ["graph"]),
        ("dynamic-int8-per-channel-unfused", ["dynamic-int8-per-channel", "-unfused"]),
        (
            "static-int8-percentile+exclude-sensitive",
            ["static-int8-percentile", "+exclude-sensitive"],
        ),
    ],
)
def test_long_names_break_at_dashes(name: str, lines: list[str]) -> None:
    assert break_name(name).split("\n") == lines


def test_terminal_table_fits_80_columns_with_reasons_below() -> None:
    from rich.console import Console

    console = Console(width=80, record=True, color_system=None)
    console.print(candidate_table(_result(), title="accuracy, objective size"))
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "…" not in text and "4.7 MB" in text and "1.23 MB" not in text
    flat = " ".join(text.split())
    assert "[1] dynamic-int8-per-channel-unfused (skip): no transformer fusion to leave out" in flat
    assert "[2] fp16 (fail): static INT8 quantization wrote a model" in flat
    assert flat.endswith(
        "keep the node it names in float (nodes_to_exclude) or try per_channel=False"
    )
    assert "static-int8-minmax 1.2 MB 2.06 ms 0.97x" in flat and "chosen" in flat
