"""The search: build candidate recipes, measure each, keep the best one within budget.

Candidates (each applies where it can; the table says why one was skipped):

* ``graph``: graph optimization only (:mod:`.passes.graph`);
* ``dynamic-int8``, ``dynamic-int8-per-channel`` (and ``dynamic-int8-reduce-range`` when
  asked for): dynamic INT8 on top of the graph-optimized model; for transformers also
  ``dynamic-int8-per-channel-unfused``, without the attention fusions (ONNX Runtime's
  integer attention is not always faster than its separate MatMulInteger kernels);
* ``static-int8-minmax``, ``-entropy``, ``-percentile``: QDQ INT8 calibrated on the
  calibration data (skipped without it); ``static-int8-entropy-conv-only`` quantizes only
  Conv/ConvTranspose/MatMul/Gemm and keeps element-wise operators in float (CNNs with
  hard-swish activations lose far less: PP-OCR's detector 0.991 mean cosine vs 0.968);
* ``<best dynamic>+exclude-sensitive``, ``<best static>+exclude-sensitive``: the same with
  the nodes that add the most quantization error kept in float;
* ``fp16``: only where a GPU/NPU execution provider is available.

The original model is measured first; its outputs are the reference for fidelity metrics.
A candidate is *within budget* when its metric is no more than ``max_drop`` worse than the
original's. Among those, the best for the objective wins: ``latency`` (median single-sample
latency; all measured candidates are re-timed side by side, round-robin, so that load from
other work on the machine does not decide; within 3% of the fastest, the smallest file wins;
a candidate must beat the original by ``min_speedup``, 5%, to count as faster at all, else
the original is kept unless a candidate is ``size_margin`` smaller)
or ``size`` (file bytes; within 10% of the smallest, the fastest wins: a few percent of
file size are rarely worth several times the latency). The margins are settings
(``latency_margin``, ``size_margin``); when one changes the winner, the result's notes say
so in a line. If no candidate beats the original within budget, the original is kept and
the result says so. A candidate whose pass has nothing to do (no operator it quantizes) is
skipped with the reason; one that fails says why in one line; neither ends the search.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeinfer.convert.onnx_io import load_onnx
from edgeinfer.errors import EdgeInferError, InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.evaluate import Evaluation, compare_latency, evaluate, peak_memory
from edgeinfer.optimize.metrics import Metric, parse_metric
from edgeinfer.optimize.passes.graph import looks_like_transformer
from edgeinfer.optimize.plan import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    SENSITIVE,
    SearchConfig,
    fp16_provider,
    plan,
    sensitive_recipe,
)
from edgeinfer.optimize.recipe import Applied, apply

__all__ = [
    "CANDIDATES",
    "DEFAULT_CANDIDATES",
    "Candidate",
    "SearchConfig",
    "SearchResult",
    "choose",
    "failure",
    "search",
]

log = logging.getLogger(__name__)

ORIGINAL = "original"
_SCREEN = 3.0  # a screened candidate dropping over 3x the budget is not measured further
_COUNTING = frozenset({"accuracy", "topk", "f1", "agreement"})  # metrics that count samples
Progress = Callable[[str, Candidate, int, int], None]  # (event, candidate, index, total)


def search(
    model: Path,
    data: Dataset,
    workdir: Path,
    config: SearchConfig,
    *,
    calibration: Dataset | None = None,
    progress: Progress | None = None,
) -> SearchResult:
    """Measure the original and every candidate on ``data``; choose (see module docs)."""
    start = time.perf_counter()
    metric = parse_metric(config.metric)
    budget = Budget.parse(config.max_drop)
    if metric.needs_labels and data.labels is None:
        raise InputError(f"metric {metric.name!r} needs labels; give --labels (labels=...)")
    report = progress or (lambda *a: None)
    planned = plan(config, calibration, looks_like_transformer(load_onnx(model)))
    total = len(planned) + 1
    baseline = Candidate(ORIGINAL, status="pending", path=Path(model))
    report("start", baseline, 0, total)

    def measure(
        path: Path, subset: Dataset, ref: Any, providers: list[str], **kw: Any
    ) -> tuple[Evaluation, Any]:
        return evaluate(
            path,
            subset,
            metric,
            reference=ref,
            providers=providers,
            output=config.output,
            threads=config.threads,
            repeats=config.repeats,
            batch_size=config.batch_size,
            **kw,
        )

    base_eval, reference = measure(
        Path(model), data, None, ["cpu"], self_reference=True, memory=config.memory
    )
    baseline.evaluation, baseline.status = base_eval, "ok"
    baseline.within_budget, baseline.drop = True, 0.0
    report("done", baseline, 0, total)
    base_value = base_eval.metrics[metric.name]
    cache: dict[str, Applied] = {}
    sens_data = calibration if calibration is not None else data
    screen = data.head(config.screen_samples) if len(data) >= 2 * config.screen_samples else None
    # Counting metrics move in steps of 1/n on n samples: the screen allows three steps.
    screen_limit = _SCREEN * budget.allowed(base_value)
    if screen is not None and metric.kind in _COUNTING:
        screen_limit += 3.0 / len(screen)
    for index, cand in enumerate(planned, start=1):
        if cand.status == "skipped":
            report("skipped", cand, index, total)
            continue
        if cand.name.endswith(SENSITIVE):
            cand.recipe, why = sensitive_recipe(
                cand.name, planned[: index - 1], metric, budget, base_value, sens_data, config
            )
            if cand.recipe is None:
                cand.status, cand.reason = "skipped", why
                report("skipped", cand, index, total)
                continue
            cand.name = cand.recipe.name
        assert cand.recipe is not None
        report("build", cand, index, total)
        providers = [fp16_provider() or "cpu", "cpu"] if cand.name == "fp16" else ["cpu"]
        try:
            applied = apply(cand.recipe, Path(model), workdir, cache)
            cand.path, cand.infos, cand.build_seconds = applied.path, applied.infos, applied.seconds
            cand.note = "; ".join(str(i["note"]) for i in applied.infos if i.get("note"))
            report("evaluate", cand, index, total)
            ev: Evaluation | None = None
            if screen is not None:
                ev, _ = measure(applied.path, screen, reference[: len(screen)], providers)
                if budget.drop(metric, base_value, ev.metrics[metric.name]) <= screen_limit:
                    ev = None  # promising: measure on everything
                else:
                    cand.reason = f"screened out on {len(screen)} samples (far outside budget)"
            if ev is None:
                ev, _ = measure(applied.path, data, reference, providers)
        except NotApplicable as exc:
            cand.status, cand.reason = "skipped", failure(exc, workdir)
            report("skipped", cand, index, total)
            continue
        except Exception as exc:  # one broken candidate must not end the whole search
            cand.status, cand.reason = "failed", failure(exc, workdir)
            log.debug("candidate %s failed:\n%s", cand.name, traceback.format_exc())
            report("failed", cand, index, total)
            continue
        value = ev.metrics[metric.name]
        cand.evaluation, cand.status = ev, "ok"
        cand.drop = budget.drop(metric, base_value, value)
        cand.within_budget = budget.within(metric, base_value, value) and not cand.reason
        report("done", cand, index, total)
    chosen, message, notes = choose(baseline, planned, metric, budget, config, data)
    if config.memory and chosen is not baseline and chosen.evaluation and chosen.path:
        mem = peak_memory(chosen.path, data.sample(0), config.threads)
        chosen.evaluation = replace(chosen.evaluation, memory_bytes=mem)
        notes.append("peak memory measured for the original and the chosen model")
    return SearchResult(
        metric,
        budget,
        config.objective,
        baseline,
        planned,
        chosen,
        message,
        time.perf_counter() - start,
        notes,
    )


def failure(exc: BaseException, workdir: Path) -> str:
    """One line a user can act on: no traceback, no scratch-file paths (they are gone)."""
    text = " ".join(str(exc).split())
    for scratch in {str(workdir), str(Path(workdir).resolve())}:
        text = re.sub(rf"{re.escape(scratch)}/\S*?\.onnx\b:?", "the candidate model", text)
    text = re.sub(r"\S*/edgeinfer-\w+-\w+/\S*?\.\w+\b:?", "a scratch file", text)
    text = re.sub(r"Load model from \S+ failed: ?", "", text)
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if not isinstance(exc, EdgeInferError):
        text = f"{type(exc).__name__}: {text}"
    return text.strip()[:300]


def choose(
    baseline: Candidate,
    planned: list[Candidate],
    metric: Metric,
    budget: Budget,
    config: SearchConfig,
    data: Dataset,
) -> tuple[Candidate, str, list[str]]:
    notes: list[str] = []
    assert baseline.evaluation is not None
    timed = [c for c in planned if c.status == "ok" and c.path is not None]
    if config.final_rounds > 0 and timed:
        # One round-robin timing of everything measured: load from other work on a shared
        # machine then hits all candidates alike instead of deciding the winner.
        lat = compare_latency(
            [baseline.path, *(c.path for c in timed)],  # type: ignore[list-item]
            data.sample(0),
            threads=config.threads,
            rounds=config.final_rounds,
        )
        for cand, ms in zip([baseline, *timed], lat, strict=True):
            cand.side_by_side_ms = ms
        notes.append(
            f"latencies re-timed side by side: {config.final_rounds} round-robin single-sample "
            f"calls of the original and the {len(timed)} measured candidates"
        )
    base_value = baseline.evaluation.metrics[metric.name]
    measured = [c for c in planned if c.status == "ok"]
    within = [c for c in measured if c.within_budget]
    limit = f"{metric.name} drop <= {budget.allowed(base_value):.4g} ({budget.describe()})"
    if not measured:
        return (
            baseline,
            "no candidate could be measured (each was skipped or failed); keeping the original",
            notes,
        )
    if not within:
        if len(measured) == 1:
            what = f"the one measured candidate ({measured[0].name}) did not meet the budget"
        else:
            what = f"none of the {len(measured)} measured candidates met the budget"
        return baseline, f"{what} ({limit}); keeping the original model", notes

    def size(c: Candidate) -> float:
        return float(c.evaluation.size_bytes) if c.evaluation else float("inf")

    # The original takes part: a candidate a little smaller (or faster) than the original
    # but far worse on the other count is not worth shipping.
    pool = [baseline, *within]
    if config.objective == "size":
        # A few percent of file size are rarely worth several times the latency: sizes
        # within the margin of the smallest count as equal, and the fastest of them wins.
        first = min(pool, key=size)
        near = [c for c in pool if size(c) <= size(first) * (1.0 + config.size_margin)]
        best = min(near, key=_latency)
        margin = f"sizes within {config.size_margin:.0%} of the smallest count as equal"
        rest = "the fastest of them wins"
        other = f"{size(best) / size(first) - 1:.0%} larger than"
        gain = f"{_latency(first) / _latency(best):.2f}x faster"
    else:
        # Latencies within the margin are a tie on a shared machine: the smaller file wins.
        first = min(pool, key=_latency)
        speedup = _latency(baseline) / _latency(first)
        if first is not baseline and not speedup > 1.0 + config.min_speedup:
            # Timing noise on a shared machine is a few percent: a candidate this close to
            # the original is not faster, and ships only if it is clearly smaller.
            notes.append(
                f"{first.name} ran {speedup:.2f}x the original's speed, within the "
                f"{config.min_speedup:.0%} noise margin: not counted as faster"
            )
            first = baseline
        limit_ms = _latency(first) * (1.0 + config.latency_margin)
        near = [c for c in pool if _latency(c) <= limit_ms]
        if first is baseline:
            smaller = size(baseline) * (1.0 - config.size_margin)
            near = [baseline, *(c for c in near if size(c) < smaller)]
        best = min(near, key=size)
        margin = f"latencies within {config.latency_margin:.0%} of the fastest count as equal"
        rest = "the smallest of them wins"
        other = f"{_latency(best) / _latency(first) - 1:.0%} slower than"
        gain = f"{size(best) / size(first):.2f}x its size"
    goal = "smaller" if config.objective == "size" else "faster"
    if best is not first:
        notes.append(
            f"objective {config.objective}: {best.name} is {other} {first.name} and {gain}; "
            f"{margin}, {rest}"
        )
    if best is baseline:
        if first is baseline:
            return baseline, f"no candidate within budget is {goal} than the original", notes
        return baseline, f"keeping the original: {notes[-1]}", notes
    ev, base = best.evaluation, baseline.evaluation
    assert ev is not None
    speed = baseline.latency_ms / best.latency_ms if best.latency_ms > 0 else float("nan")
    ratio = ev.size_bytes / base.size_bytes if base.size_bytes else float("nan")
    return (
        best,
        (
            f"chose {best.name}: {speed:.2f}x the original's speed, {ratio:.2f}x its size, "
            f"{metric.name} {ev.metrics[metric.name]:.4f} vs {base_value:.4f} ({limit})"
        ),
        notes,
    )


def _latency(c: Candidate) -> float:
    return c.latency_ms
