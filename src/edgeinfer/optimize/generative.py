"""The search on a generative bundle: weight-only quantization, gated by quality on text.

The float model is scored first on held-out text (:mod:`edgeinfer.generate.quality`: the
packaged English prose, or the text file given): its perplexity is the reference, its
greedy next-token predictions the reference for agreement. Each candidate
(:mod:`.weight_only`: INT4 by RTN (symmetric, asymmetric, or with GGUF Q4_1's float
offsets, :mod:`.int4_asymf`), HQQ or k-quant at block size 32/64/128, INT8; accuracy
level 0 or 4; the LM head at INT4, INT8 or float) is built and scored the same way. A
candidate is *within budget* when its perplexity is no more than ``max_drop`` above the
float model's (``"3%"``: relative, the default) and its next-token agreement with the float
model is at least ``min_agreement``. Then every measured model is timed side by side,
round-robin (greedy decoding of ``decode_tokens`` tokens after a prompt from the text,
through :class:`~edgeinfer.generate.GenerativeModel`): latency is the median time per
decoded token. Among those within budget the objective chooses as in :mod:`.search`:
``latency`` (within ``latency_margin`` of the fastest the smallest wins; a candidate must
beat the float model by ``min_speedup`` to count as faster) or ``size`` (within
``size_margin`` of the smallest the fastest wins). The chosen model is bundled with its
recipe and metrics, and the report (Markdown, PNG, JSON) is written beside it as for any
other search (:mod:`.generative_pipeline`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgeinfer.errors import InputError
from edgeinfer.generate.model import GenerativeModel
from edgeinfer.generate.quality import score, token_ids
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.evaluate import Evaluation
from edgeinfer.optimize.metrics import Metric
from edgeinfer.optimize.recipe import Recipe, Step
from edgeinfer.optimize.search import Progress, failure
from edgeinfer.optimize.weight_only import WeightOnly, expand, parse, quantize

__all__ = [
    "GENERATIVE_METRICS",
    "GenerativeConfig",
    "TextMetric",
    "choose",
    "decode_timing",
    "search_generative",
    "text_metric",
]

GENERATIVE_METRICS = ("perplexity", "agreement")
ORIGINAL = "original"


class TextMetric(Metric):
    """Perplexity on the held-out text (lower is better) or next-token agreement (higher)."""

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "agreement"

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        return (0.0, 1.0) if self.kind == "agreement" else (1.0, None)

    @property
    def needs_labels(self) -> bool:
        return False

    @property
    def needs_reference(self) -> bool:
        return self.kind == "agreement"


def text_metric(name: str) -> TextMetric:
    """``perplexity`` or ``agreement``; a one-line error for any other metric."""
    key = name.strip().lower()
    if key not in GENERATIVE_METRICS:
        raise InputError(
            f"metric {name!r} does not apply to a generative model; expected one of "
            f"{', '.join(GENERATIVE_METRICS)}"
        )
    return TextMetric(key, key)


@dataclass(frozen=True)
class GenerativeConfig:
    """What to optimize a language model for, within which quality budget, how to measure."""

    metric: str = "perplexity"  # the budgeted metric: perplexity or agreement
    max_drop: str | float = "3%"  # perplexity: at most 3% above the float model's
    min_agreement: float = 0.9  # next-token agreement with the float model, at least
    objective: Literal["latency", "size"] = "latency"
    candidates: tuple[str, ...] | None = None  # None: weight_only.DEFAULT_CANDIDATES; "all"
    threads: int | None = 2  # intra-op threads while scoring and timing
    window: int = 256  # tokens per scoring window (capped by the context length)
    decode_tokens: int = 32  # greedy tokens per timed generation
    prompt_tokens: int = 32  # prompt tokens (from the held-out text) of a timed generation
    rounds: int = 3  # round-robin timed generations per model
    latency_margin: float = 0.03
    size_margin: float = 0.10
    min_speedup: float = 0.05
    specs: tuple[WeightOnly, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        text_metric(self.metric)
        Budget.parse(self.max_drop)
        if self.objective not in ("latency", "size"):
            raise InputError(f"objective {self.objective!r} is invalid; expected latency or size")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"min_agreement {self.min_agreement} is not in [0, 1]")
        if self.rounds < 1 or self.decode_tokens < 2 or self.prompt_tokens < 1 or self.window < 2:
            raise InputError("rounds and prompt_tokens must be >= 1, decode_tokens and window >= 2")
        names = expand(tuple(self.candidates) if self.candidates is not None else None)
        object.__setattr__(self, "specs", tuple(parse(n) for n in names))


def _size(model_dir: Path, genai: dict[str, Any]) -> int:
    name = str(genai["decoder"]["filename"])
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.name.startswith(name))


def _genai(model_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model_dir / "genai_config.json").read_text("utf-8"))
    return data["model"]  # type: ignore[no-any-return]


def decode_timing(
    dirs: list[Path], prompt: list[int], tokens: int, rounds: int, threads: int | None
) -> list[tuple[float, float]]:
    """(median ms per decoded token, median ms to the first token) of each model, timed
    round-robin through :class:`GenerativeModel` with greedy decoding."""
    models = [GenerativeModel(d, threads=threads) for d in dirs]
    try:
        text = models[0].decode(prompt)
        per: list[list[tuple[float, float]]] = [[] for _ in models]
        for m in models:
            m.warmup()
        for _ in range(rounds):
            for i, m in enumerate(models):
                g = m.generate(text, max_tokens=tokens)
                n = len(g.token_ids)
                ms = 1000.0 / g.tokens_per_s if g.tokens_per_s > 0 else 1000.0 * g.total_s / n
                per[i].append((ms, 1000.0 * g.ttft_s))
        return [
            (statistics.median(t[0] for t in p), statistics.median(t[1] for t in p)) for p in per
        ]
    finally:
        for m in models:
            m.close()


def search_generative(
    model_dir: Path,
    text: str,
    workdir: Path,
    config: GenerativeConfig,
    *,
    progress: Progress | None = None,
) -> SearchResult:
    """Score the float model and each candidate on ``text``; time them; choose."""
    start = time.perf_counter()
    metric, budget = text_metric(config.metric), Budget.parse(config.max_drop)
    report = progress or (lambda *a: None)
    genai = _genai(model_dir)
    ids = token_ids(model_dir, text)
    planned = [
        Candidate(s.name, Recipe(s.name, (Step("weight_only", s),), s.describe()))
        for s in config.specs
    ]
    total = len(planned) + 1
    baseline = Candidate(ORIGINAL, status="pending", path=model_dir)
    report("start", baseline, 0, total)
    began = time.perf_counter()
    ref = score(model_dir, ids, window=config.window, threads=config.threads)
    baseline.evaluation = Evaluation(
        {"perplexity": ref.perplexity, "agreement": 1.0},
        math.nan,
        math.nan,
        _size(model_dir, genai),
        eval_seconds=time.perf_counter() - began,
        extra={"scored_tokens": ref.tokens},
    )
    baseline.status, baseline.within_budget, baseline.drop = "ok", True, 0.0
    report("done", baseline, 0, total)
    base_value = baseline.evaluation.metrics[metric.name]
    for index, cand in enumerate(planned, start=1):
        spec = config.specs[index - 1]
        report("build", cand, index, total)
        try:
            began = time.perf_counter()
            out = quantize(model_dir, workdir / cand.name, spec, genai)
            cand.path, cand.build_seconds = out, time.perf_counter() - began
            report("evaluate", cand, index, total)
            began = time.perf_counter()
            q = score(
                out, ids, window=config.window, threads=config.threads, reference=ref.predictions
            )
        except NotApplicable as exc:
            cand.status, cand.reason = "skipped", failure(exc, workdir)
            report("skipped", cand, index, total)
            continue
        except Exception as exc:  # one broken candidate must not end the whole search
            cand.status, cand.reason = "failed", failure(exc, workdir)
            report("failed", cand, index, total)
            continue
        cand.evaluation = Evaluation(
            q.metrics(), math.nan, math.nan, _size(out, genai),
            eval_seconds=time.perf_counter() - began, extra={"scored_tokens": q.tokens},
        )  # fmt: skip
        value = cand.evaluation.metrics[metric.name]
        cand.status, cand.drop = "ok", budget.drop(metric, base_value, value)
        cand.within_budget, cand.note = _gate(cand, metric, budget, base_value, config)
        report("done", cand, index, total)
    timed = [baseline, *(c for c in planned if c.status == "ok")]
    lat = decode_timing(
        [c.path for c in timed if c.path is not None],
        ids[: config.prompt_tokens],
        config.decode_tokens,
        config.rounds,
        config.threads,
    )
    for cand, (ms, ttft) in zip(timed, lat, strict=True):
        assert cand.evaluation is not None
        extra = {**cand.evaluation.extra, "ttft_ms": round(ttft, 3)}
        cand.evaluation = replace(cand.evaluation, latency_ms=ms, latency_p90_ms=ms, extra=extra)
        cand.side_by_side_ms = ms
    notes = [
        f"latency: median ms per decoded token, {config.rounds} round-robin greedy generations "
        f"of {config.decode_tokens} tokens after a {config.prompt_tokens}-token prompt per "
        f"model, {config.threads or 'default'} thread(s)",
        f"quality: {ref.tokens} tokens of held-out text in windows of "
        f"{min(config.window, int(genai['context_length']))}; within budget: {metric.name} "
        f"{budget.describe()} and next-token agreement >= {config.min_agreement:g}",
    ]
    chosen, message = choose(baseline, planned, metric, budget, config, notes)
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


def _gate(
    cand: Candidate, metric: Metric, budget: Budget, base: float, config: GenerativeConfig
) -> tuple[bool, str]:
    """Within budget? and, if not, why (the note)."""
    assert cand.evaluation is not None and cand.drop is not None
    why = []
    if not budget.within(metric, base, cand.evaluation.metrics[metric.name]):
        rel = f" ({cand.drop / abs(base):+.1%})" if base else ""
        why.append(f"{metric.name} drop {cand.drop:.4g}{rel} > {budget.allowed(base):.4g}")
    agree = cand.evaluation.metrics.get("agreement", 0.0)
    if agree < config.min_agreement:
        why.append(f"next-token agreement {agree:.3f} < {config.min_agreement:g}")
    return not why, "; ".join(why)


def choose(
    baseline: Candidate,
    planned: list[Candidate],
    metric: Metric,
    budget: Budget,
    config: GenerativeConfig,
    notes: list[str],
) -> tuple[Candidate, str]:
    """The best candidate within budget for the objective (see the module docs)."""
    measured = [c for c in planned if c.status == "ok"]
    within = [c for c in measured if c.within_budget]
    if not measured:
        return (
            baseline,
            "no candidate could be measured (each was skipped or failed); keeping the original",
        )
    if not within:
        return baseline, (
            f"none of the {len(measured)} measured candidates met the budget ({metric.name} "
            f"{budget.describe()}, agreement >= {config.min_agreement:g}); keeping the original"
        )

    def size(c: Candidate) -> float:
        return float(c.evaluation.size_bytes) if c.evaluation else math.inf

    pool = [baseline, *within]
    if config.objective == "size":
        first = min(pool, key=size)
        near = [c for c in pool if size(c) <= size(first) * (1.0 + config.size_margin)]
        best = min(near, key=lambda c: c.latency_ms)
    else:
        first = min(pool, key=lambda c: c.latency_ms)
        if (
            first is not baseline
            and baseline.latency_ms / first.latency_ms <= 1 + config.min_speedup
        ):
            notes.append(
                f"{first.name} is within the {config.min_speedup:.0%} noise margin of the "
                "original's decode speed: not counted as faster"
            )
            first = baseline
        near = [c for c in pool if c.latency_ms <= first.latency_ms * (1.0 + config.latency_margin)]
        if first is baseline:
            near = [
                baseline,
                *(c for c in near if size(c) < size(baseline) * (1 - config.size_margin)),
            ]
        best = min(near, key=size)
    if best is baseline:
        return (
            baseline,
            "no candidate within budget is better for the objective; keeping the original",
        )
    ev, base = best.evaluation, baseline.evaluation
    assert ev is not None and base is not None
    return best, (
        f"chose {best.name}: {baseline.latency_ms / best.latency_ms:.2f}x the original's decode "
        f"speed, {ev.size_bytes / base.size_bytes:.2f}x its size, perplexity "
        f"{ev.metrics['perplexity']:.3f} vs {base.metrics['perplexity']:.3f}, next-token "
        f"agreement {ev.metrics['agreement']:.3f}"
    )
