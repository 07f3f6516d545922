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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.runtime.bundle import stage_dir

if TYPE_CHECKING:
    from edgeinfer.optimize.candidate import Candidate, SearchResult

__all__ = [
    "Row",
    "break_name",
    "candidate_table",
    "clamp_axis",
    "place_labels",
    "qat_section",
    "report_dir_for",
    "rows",
    "write_report",
]

Row = dict[str, str]
COLUMNS = ("candidate", "size", "latency", "metric", "drop", "within budget?", "note")
_NAME_WIDTH = 24  # characters of a candidate name per line in the terminal table


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
                    "note": cand.remark,
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
                "note": cand.remark,
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
    lines.extend(qat_section(result))
    for note in result.notes:
        lines.append(f"- {note}")
    if not any(n.startswith("latency:") for n in result.notes):  # else the search said how
        lines.append(
            "- latency: median of single-sample calls through `edgeinfer.Model` on this "
            "machine; on a machine shared with other work expect a few percent of noise"
        )
    if plot:
        lines += ["", f"![latency vs {result.metric.name}]({plot})"]
    else:
        lines += ["", "(no plot: matplotlib is not installed)"]
    return "\n".join(lines) + "\n"


def _is_qat(cand: Candidate) -> bool:
    steps = cand.recipe.steps if cand.recipe is not None else ()
    return cand.name.startswith("qat") or any(s.pass_name == "qat" for s in steps)


def _ptq_partner(result: SearchResult, qat: Candidate) -> Candidate | None:
    """The post-training candidate to set beside a QAT one: the same name without its
    ``qat-`` prefix, else the best measured INT8 one."""
    others = [c for c in result.candidates if not _is_qat(c)]
    twin = qat.name.removeprefix("qat-")
    for cand in others:
        if cand.name == twin:
            return cand
    int8 = [c for c in others if "int8" in c.name and c.evaluation is not None]
    if not int8:
        return None
    name = result.metric.name
    sign = 1.0 if result.metric.higher_is_better else -1.0
    return max(int8, key=lambda c: sign * c.evaluation.metrics[name] if c.evaluation else 0.0)


def _cell(result: SearchResult, cand: Candidate | None, what: str) -> str:
    if cand is None:
        return "not measured"
    ev = cand.evaluation
    if ev is None:
        return f"{cand.status}: {cand.reason}" if what == "metric" else "-"
    if what == "metric":
        drop = "" if cand.drop is None else f" (drop {cand.drop:+.4f})"
        return f"{ev.metrics[result.metric.name]:.4f}{drop}"
    if what == "budget":
        return "yes" if cand.within_budget else "no"
    if what == "size":
        return _size(ev.size_bytes)
    if what == "latency":
        return _ms(cand.latency_ms)
    steps = [s.config for s in (cand.recipe.steps if cand.recipe else ()) if s.pass_name == "qat"]
    if not steps:
        return "-"
    step = steps[0]
    epochs, samples = getattr(step, "epochs", "?"), getattr(step, "train_samples", "?")
    loss = getattr(step, "loss", "")
    return (
        f"{epochs} epoch{'s' if epochs != 1 else ''} on {samples} samples"
        + (f" ({loss})" if loss else "")
        + f", {cand.build_seconds:.1f} s with conversion"
    )


def qat_section(result: SearchResult) -> list[str]:
    """Markdown lines setting each quantization-aware candidate beside its post-training
    twin (``qat-int8`` beside ``int8``); none when the search trained nothing."""
    lines: list[str] = []
    for qat in [c for c in result.candidates if _is_qat(c)]:
        ptq = _ptq_partner(result, qat)
        ptq_name = ptq.name if ptq is not None else "post-training"
        lines += [
            f"## Post-training vs quantization-aware: {ptq_name} and {qat.name}",
            "",
            f"| | {ptq_name} (post-training) | {qat.name} (quantization-aware) |",
            "|---|---|---|",
        ]
        for label, what in (
            (result.metric.name, "metric"),
            ("within budget?", "budget"),
            ("size", "size"),
            ("latency", "latency"),
            ("training", "training"),
        ):
            cells = (_cell(result, ptq, what), _cell(result, qat, what))
            lines.append(f"| {label} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        chosen = result.chosen.name
        lines += ["", f"- chosen: {chosen}", ""]
    return lines


def clamp_axis(ax: Any, bounds: tuple[float | None, float | None]) -> None:
    """Keep the metric axis inside the metric's range (accuracy never reads 1.02)."""
    low, high = ax.get_ylim()
    lo, hi = bounds
    if hi is not None and high > hi:
        high = hi  # points on the bound are drawn unclipped
    if lo is not None and low < lo:
        low = lo
    if high - low < 1e-9:  # every point on the bound: a small window below it
        low = high - 0.01
    ax.set_ylim(low, high)
    if hi is not None:
        ax.axhline(hi, color="black", linewidth=0.6, alpha=0.4)


_OFFSETS = ((6, 4), (6, -11), (-14, 4), (-14, -11), (6, 14), (-14, 14), (6, -21), (-14, -21))


def place_labels(ax: Any, points: list[tuple[float, float]], fontsize: float) -> list[Any]:
    """Number every point; move a label to the first offset where it overlaps nothing.

    Candidates often measure alike (the same latency, the same accuracy), so labels
    written at one fixed offset pile up on each other. Boxes are estimated in display
    pixels; a label that finds no free offset takes the least crowded one.
    """
    fig = ax.figure
    scale = fig.dpi / 72.0
    height = fontsize * scale * 1.2
    taken: list[tuple[float, float, float, float]] = []
    marks = [tuple(ax.transData.transform(p)) for p in points]
    r = 4 * scale  # a marker's half width
    for x, y in marks:  # the points themselves are in the way too
        taken.append((x - r, y - r, x + r, y + r))

    frame = ax.bbox

    def overlaps(box: tuple[float, float, float, float]) -> int:
        outside = not (
            frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
        )
        return int(outside) + sum(
            1 for b in taken if box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
        )

    labels: list[Any] = []
    for number, (point, (x, y)) in enumerate(zip(points, marks, strict=True)):
        width = 0.62 * fontsize * scale * len(str(number))
        best, best_hits = _OFFSETS[0], None
        for dx, dy in _OFFSETS:
            px, py = x + dx * scale, y + dy * scale
            box = (px, py, px + width, py + height)
            hits = overlaps(box)
            if best_hits is None or hits < best_hits:
                best, best_hits = (dx, dy), hits
            if hits == 0:
                break
        px, py = x + best[0] * scale, y + best[1] * scale
        taken.append((px, py, px + width, py + height))
        labels.append(
            ax.annotate(
                str(number), point, fontsize=fontsize, textcoords="offset points", xytext=best
            )
        )
    return labels


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
    points: list[tuple[float, float]] = []
    for c in measured:
        ev = c.evaluation
        assert ev is not None
        chosen = c is result.chosen
        points.append((c.latency_ms, ev.metrics[name]))
        ax.scatter(
            *points[-1],
            s=180 if chosen else 45,
            color="tab:green" if c.within_budget else "tab:red",
            marker="*" if chosen else "o",
            zorder=3,
            edgecolors="black" if chosen else "none",
            clip_on=False,
        )
    base = result.baseline.evaluation
    if base is not None:
        value = base.metrics[name]
        allowed = result.budget.allowed(value)
        edge = value - allowed if result.metric.higher_is_better else value + allowed
        ax.axhline(edge, color="gray", linestyle="--", linewidth=1, label="budget edge")
        ax.legend(
            loc="lower right" if result.metric.higher_is_better else "upper right", fontsize=8
        )
    ax.margins(x=0.08, y=0.08)
    ax.autoscale_view()
    clamp_axis(ax, result.metric.bounds)
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
    # Numbers, not names, by the points (the bar chart names them), placed once the
    # layout is final, so that their pixel positions are known.
    place_labels(ax, points, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(
    result: SearchResult, out_dir: Path, *, title: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write report.json, report.md and report.png into ``out_dir`` (replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # the mode a plain mkdir gives, not mkdtemp's 0o700: the report is for others to read
    stage = stage_dir(out_dir.parent, f".{out_dir.name}.")
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


def _ms(ms: float) -> str:
    if math.isnan(ms):
        return "-"
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def break_name(name: str, width: int = _NAME_WIDTH) -> str:
    """A candidate name on lines of at most ``width``, broken before ``+`` and at ``-``.

    Terminal tables wrap only at spaces; a long name would otherwise be cut anywhere
    ("dynamic-i/nt8"). Names stay whole words a user can copy into ``--candidates``.
    """
    lines: list[str] = []
    for part in name.replace("+", "\n+").split("\n"):
        while len(part) > width:
            cut = part.rfind("-", 1, width + 1)
            cut = cut if cut > 0 else width
            lines.append(part[:cut])
            part = part[cut:]
        lines.append(part)
    return "\n".join(lines)


def candidate_table(result: SearchResult, title: str = "candidates") -> Any:
    """The candidate table for a terminal, with every reason in full below it.

    Fits 80 columns (``COLUMNS=80``, or output redirected to a file): a short set of
    columns, names broken at their dashes, sizes in kB/MB, and the reasons (why a
    candidate failed, was skipped or screened out) as numbered notes under the table
    instead of cut-off cells. Returns a rich renderable (``console.print`` it).
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    name = result.metric.name
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    header = name if len(name) <= 8 else "metric"  # the title names it
    for col in ("candidate", "size", "latency", "speed", header, "drop", "in budget"):
        table.add_column(col, justify="left" if col == "candidate" else "right", no_wrap=True)
    base = result.baseline
    notes: list[Text] = []
    for cand in [base, *result.candidates]:
        ev = cand.evaluation
        state = {"skipped": "skip", "failed": "fail"}.get(cand.status, cand.status)
        if ev is not None:
            state = "chosen" if cand is result.chosen else ("yes" if cand.within_budget else "no")
        if cand.remark:
            notes.append(Text(f"[{len(notes) + 1}] {cand.name} ({state}): {cand.remark}"))
            state = f"{state} [{len(notes)}]"
        style = {"chosen": "bold green", "yes": "green", "skip": "dim"}.get(state.split()[0])
        if ev is None:
            cells = ["-"] * 5
        else:
            speed = base.latency_ms / cand.latency_ms if cand.latency_ms else math.nan
            cells = [
                _size(ev.size_bytes),
                _ms(cand.latency_ms),
                f"{speed:.2f}x",
                f"{ev.metrics[name]:.4f}",
                "-" if cand.drop is None else f"{cand.drop:+.4f}",
            ]
        table.add_row(Text(break_name(cand.name)), *cells, state, style=style)
    return Group(table, *notes) if notes else table
