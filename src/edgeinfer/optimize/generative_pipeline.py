"""End to end for a generative bundle: the float model in, the best quantized bundle and
its report out (the search is :mod:`.generative`).

:func:`optimize_generative` checks what it can before any work (the bundle is generative,
the eval text reads, the output location is free), runs the search in a scratch directory
beside the output, bundles the chosen model with :func:`edgeinfer.generate.create_bundle`
(its recipe, its metrics, and a golden sample of greedy continuations from the same prompts
as the source's) and writes the report next to it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeinfer.bundle import Bundle, check_out_dir
from edgeinfer.errors import InputError
from edgeinfer.generate.bundle import GOLDEN_PROMPTS, create_bundle
from edgeinfer.generate.model import GenerativeModel
from edgeinfer.generate.quality import read_text
from edgeinfer.optimize.generative import GenerativeConfig, search_generative
from edgeinfer.optimize.pipeline import OptimizeResult
from edgeinfer.optimize.report import report_dir_for, write_report
from edgeinfer.optimize.search import Progress

__all__ = ["optimize_generative"]


def optimize_generative(
    model: str | Path,
    out_dir: str | Path,
    *,
    eval_text: str | Path | None = None,
    config: GenerativeConfig | None = None,
    name: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Quantize a float generative bundle within the quality budget; bundle the best.

    ``eval_text`` is a UTF-8 text file (None: the packaged held-out English text).

    >>> optimize_generative("bundles/smollm2-fp32", "bundles/smollm2-opt")  # doctest: +SKIP
    """
    config = config or GenerativeConfig()
    out = Path(out_dir)
    source = Bundle.open(model)
    if source.manifest.kind != "generative":
        raise InputError(
            f"{model}: a {source.manifest.kind} bundle; this search takes a generative one "
            "(a language model bundled with edgeinfer.generate.create_bundle)"
        )
    text = read_text(eval_text)
    check_out_dir(out, overwrite)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.work.", dir=out.parent) as tmp:
        result = search_generative(source.path, text, Path(tmp), config, progress=progress)
        chosen = result.chosen
        ev, base = chosen.evaluation, result.baseline.evaluation
        assert ev is not None and base is not None and chosen.path is not None
        metrics: dict[str, Any] = {k: round(v, 6) for k, v in ev.metrics.items()}
        metrics.update(
            decode_ms_per_token=round(chosen.latency_ms, 4),
            size_bytes=ev.size_bytes,
            optimize={
                "metric": result.metric.name,
                "baseline": round(base.metrics[result.metric.name], 6),
                "value": round(ev.metrics[result.metric.name], 6),
                "max_drop": {"value": result.budget.value, "relative": result.budget.relative},
                "min_agreement": config.min_agreement,
                "objective": config.objective,
                "baseline_decode_ms_per_token": round(result.baseline.latency_ms, 4),
                "baseline_size_bytes": base.size_bytes,
                "speedup": round(result.baseline.latency_ms / chosen.latency_ms, 3),
                "size_ratio": round(ev.size_bytes / base.size_bytes, 4),
                "eval_tokens": ev.extra.get("scored_tokens"),
                "kept_original": result.kept_original,
            },
        )
        spec = source.manifest.generative
        recipe: dict[str, Any] = {
            "candidate": chosen.name,
            **(chosen.recipe.to_dict() if chosen.recipe else {"steps": []}),
            "search": {
                "metric": result.metric.name,
                "max_drop": str(config.max_drop),
                "min_agreement": config.min_agreement,
                "objective": config.objective,
            },
        }
        if chosen.recipe is None and spec is not None and spec.quantization:
            recipe = {**dict(spec.quantization), **recipe}
        bundle = create_bundle(
            chosen.path,
            out,
            name=name or source.name,
            version=version if version is not None else source.version + 1,
            golden_prompts=_golden_prompts(source),
            golden_max_tokens=spec.golden_max_tokens if spec and spec.golden_max_tokens else 16,
            quantization=recipe,
            metrics=metrics,
            source=str(source.path),
            source_sha256=source.manifest.model.sha256,
            overwrite=overwrite,
        )
    report_dir = None
    if report:
        report_dir = write_report(
            result,
            report_dir_for(out),
            title=f"edgeinfer optimize: {source.name}",
            extra={"bundle": str(out), "source": str(source.path), "kind": "generative"},
        )
    return OptimizeResult(bundle, report_dir, result)


def _golden_prompts(source: Bundle) -> tuple[str, ...]:
    """The source's golden prompts as text (the new bundle records its own continuations)."""
    golden = source.golden()
    if golden is None:
        return GOLDEN_PROMPTS
    with GenerativeModel(source.path) as m:
        return tuple(m.decode([int(t) for t in ids]) for ids in golden.inputs.values())
