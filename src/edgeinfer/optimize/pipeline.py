"""End to end: model + data in, an optimized bundle and its report out.

:func:`optimize` checks everything it can before any work starts (the model opens, the
eval and calibration data fit its inputs, the labels fit the data, the metric and budget
parse, the output location is free), runs the search in a scratch directory beside the
output, then writes the bundle with ``Bundle.create`` (staged and moved into place: a
failure leaves nothing behind) and the report next to it. :func:`distill` does the same for
the distillation path: train a student, measure it against the teacher, bundle it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.bundle import Bundle, check_out_dir
from edgeinfer.errors import InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.data import Dataset, DataSource, load_dataset
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.report import report_dir_for, write_report
from edgeinfer.optimize.search import Progress, SearchConfig, choose, search

__all__ = ["OptimizeResult", "distill", "optimize"]

_GOLDEN = 4  # eval samples recorded as the bundle's golden sample
_QUANT_TOL = 1e-2  # golden tolerance for quantized models: integer kernels differ by CPU


@dataclass(frozen=True)
class OptimizeResult:
    """The bundle written, the report directory, and the full search result."""

    bundle: Bundle
    report_dir: Path | None
    result: SearchResult


def _source(model: str | os.PathLike[str]) -> Bundle:
    bundle = Bundle.open(model)
    if bundle.manifest.kind == "generative":
        raise InputError(
            f"{model}: a generative bundle; quantize it with "
            "edgeinfer.optimize.generative_pipeline.optimize_generative (the CLI does so by itself)"
        )
    if bundle.manifest.format != "onnx":
        raise InputError(
            f"{model}: optimize works on ONNX models; this is a {bundle.manifest.format} model"
        )
    return bundle


def _bundle(
    source: Bundle,
    model_path: Path,
    out_dir: Path,
    data: Dataset,
    *,
    name: str | None,
    version: int | None,
    metrics: dict[str, Any],
    recipe: dict[str, Any],
    quantized: bool,
    overwrite: bool,
) -> Bundle:
    golden = data.head(min(_GOLDEN, len(data)))
    tol = {"atol": _QUANT_TOL, "rtol": _QUANT_TOL} if quantized else {}
    return Bundle.create(
        model_path,
        out_dir,
        name=name or source.name,
        version=version if version is not None else source.version + 1,
        golden_inputs=golden.feeds(),
        labels=source.manifest.labels,
        metrics=metrics,
        recipe=recipe,
        source=str(source.path),
        source_sha256=source.manifest.model.sha256,
        overwrite=overwrite,
        **tol,  # type: ignore[arg-type]
    )


def optimize(
    model: str | os.PathLike[str],
    eval_data: DataSource,
    out_dir: str | os.PathLike[str],
    *,
    labels: Any = None,
    calibration: DataSource | None = None,
    config: SearchConfig | None = None,
    name: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Search for the best model within the accuracy budget and bundle it in ``out_dir``.

    >>> optimize("bundles/digits-cnn", {"pixels": x_test, "labels": y_test},
    ...          "bundles/digits-int8", calibration={"pixels": x_train[:256]},
    ...          config=SearchConfig(metric="accuracy", max_drop=0.005))   # doctest: +SKIP
    """
    config = config or SearchConfig()
    out = Path(out_dir)
    source = _source(model)
    specs = source.manifest.inputs
    data = load_dataset(eval_data, specs, labels=labels, what="eval data")
    calib = None
    if calibration is not None:
        calib = load_dataset(calibration, specs, what="calibration data")
    metric = parse_metric(config.metric)
    Budget.parse(config.max_drop)
    if metric.needs_labels and data.labels is None:
        raise InputError(f"metric {metric.name!r} needs labels; give --labels (labels=...)")
    outputs = [s.name for s in source.manifest.outputs]
    if config.output is not None and config.output not in outputs:
        raise InputError(f"output {config.output!r} not found; the model has {', '.join(outputs)}")
    check_out_dir(out, overwrite)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.work.", dir=out.parent) as tmp:
        result = search(
            source.model_path, data, Path(tmp), config, calibration=calib, progress=progress
        )
        chosen = result.chosen
        ev, base = chosen.evaluation, result.baseline.evaluation
        assert ev is not None and base is not None
        metrics: dict[str, Any] = {k: round(v, 6) for k, v in ev.metrics.items()}
        metrics.update(
            latency_ms=round(chosen.latency_ms, 4),
            size_bytes=ev.size_bytes,
            memory_bytes=ev.memory_bytes,
            optimize={
                "metric": metric.name,
                "baseline": round(base.metrics[metric.name], 6),
                "value": round(ev.metrics[metric.name], 6),
                "max_drop": {"value": result.budget.value, "relative": result.budget.relative},
                "objective": config.objective,
                "baseline_latency_ms": round(result.baseline.latency_ms, 4),
                "baseline_size_bytes": base.size_bytes,
                "speedup": round(result.baseline.latency_ms / chosen.latency_ms, 3),
                "size_ratio": round(ev.size_bytes / base.size_bytes, 4),
                "eval_samples": len(data),
                "kept_original": result.kept_original,
            },
        )
        recipe = {
            "candidate": chosen.name,
            **(chosen.recipe.to_dict() if chosen.recipe else {"steps": []}),
            "search": {
                "metric": metric.name,
                "max_drop": str(config.max_drop),
                "objective": config.objective,
            },
        }
        assert chosen.path is not None
        quantized = chosen.recipe is not None and any(
            s.pass_name in ("dynamic_int8", "static_int8", "sensitivity")
            for s in chosen.recipe.steps
        )
        bundle = _bundle(
            source,
            chosen.path,
            out,
            data,
            name=name,
            version=version,
            metrics=metrics,
            recipe=recipe,
            quantized=quantized,
            overwrite=overwrite,
        )
    report_dir = None
    if report:
        report_dir = write_report(
            result,
            report_dir_for(out),
            title=f"edgeinfer optimize: {source.name}",
            extra={"bundle": str(out), "source": str(source.path)},
        )
    return OptimizeResult(bundle, report_dir, result)


def distill(
    teacher: str | os.PathLike[str],
    data: DataSource,
    student: Any,
    out_dir: str | os.PathLike[str],
    *,
    eval_data: DataSource | None = None,
    labels: Any = None,
    config: SearchConfig | None = None,
    distill_options: dict[str, Any] | None = None,
    name: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Train ``student`` on ``teacher``'s outputs over unlabeled ``data``; measure and bundle.

    The student is kept only if it is within the budget of ``config`` (metric against
    ``labels`` or fidelity to the teacher) and better for the objective; otherwise the
    teacher is bundled and the report says why.
    """
    from edgeinfer.optimize.evaluate import evaluate
    from edgeinfer.optimize.passes.distill import DistillConfig
    from edgeinfer.optimize.passes.distill import run as run_distill
    from edgeinfer.optimize.recipe import Recipe, Step

    config = config or SearchConfig(metric="agreement" if labels is None else "accuracy")
    out = Path(out_dir)
    source = _source(teacher)
    specs = source.manifest.inputs
    train = load_dataset(data, specs, what="distillation data")
    evald = load_dataset(eval_data if eval_data is not None else data, specs, labels=labels)
    metric = parse_metric(config.metric)
    if metric.needs_labels and evald.labels is None:
        raise InputError(f"metric {metric.name!r} needs labels; give --labels (labels=...)")
    dcfg = DistillConfig(
        student=student, data=train, output=config.output, **(distill_options or {})
    )
    check_out_dir(out, overwrite)
    budget = Budget.parse(config.max_drop)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.work.", dir=out.parent) as tmp:
        baseline = Candidate("teacher", status="ok", path=source.model_path)
        cand = Candidate("student", Recipe("student", (Step("distill", dcfg),), "distilled"))
        if progress:
            progress("start", baseline, 0, 2)
        measure = {
            "output": config.output,
            "threads": config.threads,
            "repeats": config.repeats,
            "batch_size": config.batch_size,
        }
        baseline.evaluation, reference = evaluate(
            source.model_path,
            evald,
            metric,
            self_reference=True,
            memory=config.memory,
            **measure,  # type: ignore[arg-type]
        )
        if progress:
            progress("build", cand, 1, 2)
        student_path = Path(tmp) / "student.onnx"
        trained = run_distill(source.model_path, dcfg, student_path)
        cand.path, cand.infos = student_path, (dict(trained.info),)
        if progress:
            progress("evaluate", cand, 1, 2)
        cand.evaluation, _ = evaluate(
            student_path,
            evald,
            metric,
            reference=reference,
            memory=config.memory,
            **measure,  # type: ignore[arg-type]
        )
        base_value = baseline.evaluation.metrics[metric.name]
        value = cand.evaluation.metrics[metric.name]
        cand.status, cand.drop = "ok", budget.drop(metric, base_value, value)
        cand.within_budget = budget.within(metric, base_value, value)
        baseline.within_budget, baseline.drop = True, 0.0
        if progress:
            progress("done", cand, 1, 2)
        chosen, message, notes = choose(baseline, [cand], metric, budget, config, evald)
        seconds = time.perf_counter() - started
        result = SearchResult(
            metric, budget, config.objective, baseline, [cand], chosen, message, seconds, notes
        )
        ev = chosen.evaluation
        assert ev is not None and chosen.path is not None
        metrics: dict[str, Any] = {k: round(v, 6) for k, v in ev.metrics.items()}
        metrics.update(
            latency_ms=round(chosen.latency_ms, 4),
            size_bytes=ev.size_bytes,
            distill=dict(trained.info),
        )
        recipe = {"candidate": chosen.name, **(cand.recipe.to_dict() if cand.recipe else {})}
        bundle = _bundle(
            source,
            chosen.path,
            out,
            evald,
            name=name,
            version=version,
            metrics=metrics,
            recipe=recipe if chosen is cand else {"candidate": "teacher", "steps": []},
            quantized=False,
            overwrite=overwrite,
        )
    report_dir = None
    if report:
        report_dir = write_report(
            result,
            report_dir_for(out),
            title=f"edgeinfer distill: {source.name}",
            extra={"bundle": str(out), "teacher": str(source.path), "distill": trained.info},
        )
    return OptimizeResult(bundle, report_dir, result)
