"""The search report: ``report.json``, ``report.md`` and ``report.png``.

Written to a directory next to the output bundle (``<bundle>-report/``), atomically (a
temporary directory, then a rename). The plot shows latency against the metric, one point
per measured candidate, the chosen one marked and the budget drawn as a line; file sizes
are bars beside it. Without matplotlib the plot is skipped and the markdown says so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeinfer.optimize.candidate import Candidate, SearchResult

__all__ = ["Row", "report_dir_for", "rows", "write_report"]

Row = dict[str, str]
COLUMNS = ("candidate", "size", "latency", "metric", "drop", "within budget?", "note")
_NOTE_CHARS = 48  # notes longer than this are cut in the terminal table


def report_dir_for(bundle_dir: Path) -> Path:
    """Where the report of the bundle at ``bundle_dir`` goes: ``<bundle>-report`` beside it."""
    return bundle_dir.with_name(f"{bundle_dir.name}-report")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def rows(result: SearchResult) -> list[Row]:
    """One table row per candidate (the original first), as display strings."""
    base = result.baseline.evaluation
    out = []
    for cand in [result.baseline, *result.candidates]:
        ev = cand.evaluation
        if ev is None or base is None:
            out.append(
                {
                    "candidate": cand.name,
                    "size": "-",
                    "latency": "-",
                    "metric": "-",
                    "drop": "-",
                    "within budget?": cand.status,
                    "note": cand.reason,
                }
            )
            continue
        ratio = ev.size_bytes / base.size_bytes if base.size_bytes else math.nan
        base_ms = result.baseline.latency_ms
        speed = base_ms / cand.latency_ms if cand.latency_ms else math.nan
        chosen = " (chosen)" if cand is result.chosen else ""
        out.append(
            {
                "candidate": cand.name + chosen,
                "size": f"{_size(ev.size_bytes)} ({ratio:.2f}x)",
                "latency": f"{cand.latency_ms:.3f} ms ({speed:.2f}x speed)",
                "metric": f"{ev.metrics[result.metric.name]:.4f}",
                "drop": "-" if cand.drop is None else f"{cand.drop:+.4f}",
                "within budget?": "yes" if cand.within_budget else "no",
                "note": cand.reason,
            }
        )
    return out


def _markdown(result: SearchResult, title: str, plot: str | None) -> str:
    table = rows(result)
    lines = [
        f"# {title}",
        "",
        f"- metric: **{result.metric.name}** "
        f"({'higher' if result.metric.higher_is_better else 'lower'} is better)",
        f"- budget: max drop {result.budget.describe()}",
        f"- objective: **{result.objective}**",
        f"- result: {result.message}",
        f"- search time: {result.seconds:.1f} s",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in table:
        lines.append("| " + " | ".join(row[c].replace("|", "/") for c in COLUMNS) + " |")
    lines.append("")
    for note in result.notes:
        lines.append(f"- {note}")
    lines.append(
        "- latency: median of single-sample calls through `edgeinfer.Model` on this machine; "
        "on a machine shared with other work expect a few percent of noise"
    )
    if plot:
        lines += ["", f"![latency vs {result.metric.name}]({plot})"]
    else:
        lines += ["", "(no plot: matplotlib is not installed)"]
    return "\n".join(lines) + "\n"


def _plot(result: SearchResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured: Sequence[Candidate] = [
        c for c in [result.baseline, *result.candidates] if c.evaluation is not None
    ]
    name = result.metric.name
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for number, c in enumerate(measured):
        ev = c.evaluation
        assert ev is not None
        chosen = c is result.chosen
        ax.scatter(
            c.latency_ms,
            ev.metrics[name],
            s=180 if chosen else 45,
            color="tab:green" if c.within_budget else "tab:red",
            marker="*" if chosen else "o",
            zorder=3,
            edgecolors="black" if chosen else "none",
        )
        # Numbers, not names, by the points: names of close candidates would overlap.
        ax.annotate(
            str(number),
            (c.latency_ms, ev.metrics[name]),
            fontsize=8,
            textcoords="offset points",
            xytext=(5, 3),
        )
    base = result.baseline.evaluation
    if base is not None:
        value = base.metrics[name]
        allowed = result.budget.allowed(value)
        edge = value - allowed if result.metric.higher_is_better else value + allowed
        ax.axhline(edge, color="gray", linestyle="--", linewidth=1, label="budget edge")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("latency, ms (median, batch 1)")
    ax.set_ylabel(name)
    ax.set_title(f"latency vs {name} (star: chosen; green: within budget)", fontsize=10)
    ax.grid(alpha=0.3)
    sizes = [c.evaluation.size_bytes for c in measured if c.evaluation is not None]
    scale, unit = (1e6, "MB") if max(sizes) >= 1e6 else (1e3, "kB")
    colors = ["tab:green" if c is result.chosen else "tab:blue" for c in measured]
    bars.barh(range(len(measured)), [b / scale for b in sizes], color=colors)
    bars.set_yticks(
        range(len(measured)), [f"{i}  {c.name}" for i, c in enumerate(measured)], fontsize=7
    )
    bars.invert_yaxis()
    bars.set_xlabel(f"file size, {unit}")
    bars.set_title("size (numbers match the points)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(
    result: SearchResult, out_dir: Path, *, title: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write report.json, report.md and report.png into ``out_dir`` (replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        data = {"title": title, **result.to_dict(), **(extra or {})}
        (stage / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        plotted = _plot(result, stage / "report.png")
        (stage / "report.md").write_text(
            _markdown(result, title, "report.png" if plotted else None), encoding="utf-8"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(stage, out_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out_dir


def candidate_table(result: SearchResult, title: str = "candidates") -> Any:
    """The candidate table as a ``rich.table.Table`` (for the CLI and the demo)."""
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(
            col,
            justify="right" if col in ("size", "latency", "metric") else "left",
            overflow="fold",
        )
    for row in rows(result):
        if len(row["note"]) > _NOTE_CHARS:
            row["note"] = row["note"][: _NOTE_CHARS - 1] + "…"  # the full text is in report.md
        row["latency"] = row["latency"].replace(" speed)", ")")
        within = row["within budget?"]
        style = "green" if within == "yes" else ("dim" if within in ("skipped",) else None)
        if "(chosen)" in row["candidate"]:
            style = "bold green"
        table.add_row(*(row[c] for c in COLUMNS), style=style)
    return table
