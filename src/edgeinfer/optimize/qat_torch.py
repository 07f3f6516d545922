"""Quantization-aware training of a PyTorch module, shipped as a QDQ INT8 ONNX model.

When post-training INT8 loses too much accuracy, ``qat_torch(module, example, train, eval,
out_dir)`` fine-tunes a copy of the module with fake quantization and measures the result
beside post-training quantization, on the same eval data, metric and budget:

1. The module is exported to ONNX as it is (the float baseline), and the ONNX search's
   static INT8 candidates (:mod:`.search`, default ``static-int8-minmax/-entropy/
   -percentile``) run on that export with the calibration data: the PTQ rows.
2. A copy is fake-quantized with torch.ao's FX graph mode, its observers started on the
   calibration data, and fine-tuned for ``epochs`` on the labelled training data
   (:mod:`.qat_train`: cross-entropy for integer labels, mean squared error for float
   targets; every epoch reported through ``on_epoch``).
3. The trained copy's float weights (batch norm folded) are exported, and
   :mod:`.qat_ranges` writes the QDQ INT8 model with the scales and zero points QAT
   learned, checked one by one in the written file: the ``qat-int8`` row.
4. The same choice as every search (:func:`.search.choose`, latencies re-timed side by
   side), the same bundle and report (PTQ and QAT rows in one table).

A module torch.fx cannot trace, or one that does not export, is refused in one line
before any training.

>>> qat_torch(net, x_train[:4], (x_train, y_train), {"pixels": x_test, "labels": y_test},
...           "bundles/digits-qat", qat=QATConfig(epochs=2),
...           config=SearchConfig(metric="accuracy", max_drop=0.005))   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import Bundle, check_out_dir
from edgeinfer.errors import EdgeInferError, InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.data import Dataset, DataSource, load_dataset, model_specs
from edgeinfer.optimize.evaluate import evaluate, peak_memory, predict_all
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.passes import compact, graph
from edgeinfer.optimize.passes.compact import CompactConfig
from edgeinfer.optimize.passes.static_int8 import METHODS, StaticInt8Config
from edgeinfer.optimize.pipeline import OptimizeResult
from edgeinfer.optimize.qat_ranges import quantize_with_ranges
from edgeinfer.optimize.qat_train import (
    EpochStats,
    QATConfig,
    QATStep,
    fit,
    float_copy,
    learned_ranges,
    prepare,
    tensors,
    torch_threads,
)
from edgeinfer.optimize.recipe import Recipe, Step
from edgeinfer.optimize.report import report_dir_for, write_report
from edgeinfer.optimize.search import Progress, SearchConfig, choose, failure, search

__all__ = ["PTQ_CANDIDATES", "EpochStats", "QATConfig", "qat_torch"]

PTQ_CANDIDATES = tuple(f"static-int8-{m}" for m in METHODS)
QAT = "qat-int8"
_GOLDEN = 4
_QUANT_TOL = 1e-2  # golden tolerance for quantized models: integer kernels differ by CPU
_PROBE = 8  # samples whose activations place the learned ranges


def _train_set(train: Any, specs: Any) -> Dataset:
    """``(x, y)``, or an .npz path / mapping with the inputs and ``labels``."""
    if isinstance(train, tuple):
        if len(train) != 2:
            raise InputError(
                f"training data: a tuple of {len(train)} items; expected (inputs, labels)"
            )
        data = load_dataset(train[0], specs, labels=train[1], what="training data")
    else:
        data = load_dataset(train, specs, what="training data")
    if data.labels is None:
        raise InputError(
            "training data has no labels; give (x, y) or an .npz/dict with a 'labels' array"
        )
    return data


def _export(torch: Any, module: Any, example: Any, path: Path, names: Any) -> None:
    from edgeinfer.convert.torch import torch_to_onnx

    with torch.no_grad():
        torch_to_onnx(
            copy.deepcopy(module), example, path, input_names=names[0], output_names=names[1]
        )


def _build(
    torch: Any,
    prepared: Any,
    calib: Dataset,
    names: tuple[list[str], list[str]],
    config: SearchConfig,
    work: Path,
) -> tuple[Path, Step, dict[str, Any]]:
    """The trained copy as QDQ INT8 ONNX with its learned ranges; the step and its info."""
    probe = calib.head(_PROBE)
    learned = learned_ranges(torch, prepared, tuple(tensors(torch, probe, names[0], slice(None))))
    step_cfg = replace(
        learned,
        quantization=StaticInt8Config(max_samples=config.calibration_samples),
        probe={k: probe.arrays[k] for k in names[0]},
    )
    plain = float_copy(torch, prepared)
    example = tuple(tensors(torch, probe, names[0], slice(0, 2)))
    _export(torch, plain, example, work / "qat-float.onnx", names)
    optimized = graph.run(work / "qat-float.onnx", config.graph, work / "qat-graph.onnx").path
    qdq = work / "qat-qdq.onnx"
    _, info = quantize_with_ranges(optimized, step_cfg, calib, qdq)
    if config.compact:
        qdq = compact.run(qdq, CompactConfig(), work / f"{QAT}.onnx").path
    return qdq, Step("static_int8_learned_ranges", step_cfg), info


def _reference(path: Path, data: Dataset, output: str, batch_size: int) -> np.ndarray:
    from edgeinfer.runtime.model import load

    model = load(path, providers=["cpu"])
    try:
        return predict_all(model, data, output, batch_size)
    finally:
        model.close()


def _side_by_side(ptq: list[Candidate], qat: Candidate, metric: str) -> str:
    """One line for the report: the best PTQ row against the QAT row."""
    done = [c for c in ptq if c.status == "ok" and c.drop is not None and not c.reason]
    if qat.evaluation is None or qat.drop is None:
        return f"PTQ vs QAT: the QAT candidate did not finish ({qat.reason or qat.status})"
    value = qat.evaluation.metrics[metric]
    if not done:
        return f"PTQ vs QAT: no PTQ candidate was measured; QAT {metric} {value:.4f}"
    best = min(done, key=lambda c: c.drop if c.drop is not None else math.inf)
    assert best.evaluation is not None and best.drop is not None
    return (
        f"PTQ vs QAT: best PTQ ({best.name}) {metric} "
        f"{best.evaluation.metrics[metric]:.4f} (drop {best.drop:+.4f}); "
        f"QAT {value:.4f} (drop {qat.drop:+.4f})"
    )


def _bundle(
    result: SearchResult,
    data: Dataset,
    out: Path,
    name: str,
    version: int | None,
    source: str,
    overwrite: bool,
) -> Bundle:
    chosen, base = result.chosen, result.baseline
    ev, base_ev = chosen.evaluation, base.evaluation
    assert ev is not None and base_ev is not None and chosen.path is not None
    metric = result.metric.name
    metrics: dict[str, Any] = {k: round(v, 6) for k, v in ev.metrics.items()}
    metrics.update(
        latency_ms=round(chosen.latency_ms, 4),
        size_bytes=ev.size_bytes,
        memory_bytes=ev.memory_bytes,
        optimize={
            "metric": metric,
            "baseline": round(base_ev.metrics[metric], 6),
            "value": round(ev.metrics[metric], 6),
            "max_drop": {"value": result.budget.value, "relative": result.budget.relative},
            "objective": result.objective,
            "baseline_latency_ms": round(base.latency_ms, 4),
            "baseline_size_bytes": base_ev.size_bytes,
            "speedup": round(base.latency_ms / chosen.latency_ms, 3),
            "size_ratio": round(ev.size_bytes / base_ev.size_bytes, 4),
            "eval_samples": len(data),
            "kept_original": result.kept_original,
        },
    )
    recipe = {
        "candidate": chosen.name,
        **(chosen.recipe.to_dict() if chosen.recipe else {"steps": []}),
        "search": {"metric": metric, "objective": result.objective, "qat": True},
    }
    tol = {} if result.kept_original else {"atol": _QUANT_TOL, "rtol": _QUANT_TOL}
    return Bundle.create(
        chosen.path,
        out,
        name=name,
        version=version if version is not None else 1,
        golden_inputs=data.head(min(_GOLDEN, len(data))).feeds(),
        metrics=metrics,
        recipe=recipe,
        source=source,
        overwrite=overwrite,
        **tol,  # type: ignore[arg-type]
    )


def qat_torch(
    module: Any,
    example_input: Any,
    train: Any,
    eval_data: DataSource,
    out_dir: str | os.PathLike[str],
    *,
    labels: Any = None,
    calibration: DataSource | None = None,
    qat: QATConfig | None = None,
    config: SearchConfig | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    name: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: Progress | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> OptimizeResult:
    """Measure PTQ and QAT INT8 of ``module`` against its float export; bundle the best.

    ``example_input``: one tensor/array (or a tuple, one per ``forward`` argument) with the
    batch on axis 0; ``train``: ``(x, y)`` or an .npz/dict with the inputs and ``labels``;
    ``eval_data`` as for :func:`~edgeinfer.optimize.optimize`; ``calibration`` (default:
    the first training samples) calibrates the PTQ candidates and starts the QAT
    observers; ``config.candidates`` names the PTQ candidates (default
    :data:`PTQ_CANDIDATES`). Progress: ``progress`` per candidate as in
    :func:`~edgeinfer.optimize.search`, ``on_epoch`` per training epoch.
    """
    from edgeinfer.convert.torch import import_torch

    torch = import_torch("Quantization-aware training")
    qcfg = qat or QATConfig()
    config = config or SearchConfig()
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"qat_torch takes a torch.nn.Module, got {type(module).__name__}")
    metric = parse_metric(config.metric)
    budget = Budget.parse(config.max_drop)
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    started = time.perf_counter()
    stats: list[EpochStats] = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.work.", dir=out.parent) as tmp:
        work = Path(tmp)
        float_path = work / "float.onnx"
        _export(torch, module, example_input, float_path, (input_names, output_names))
        specs = model_specs(float_path)
        ins = [s.name for s in specs]
        outs = _output_names(float_path)
        data = load_dataset(eval_data, specs, labels=labels, what="eval data")
        if metric.needs_labels and data.labels is None:
            raise InputError(f"metric {metric.name!r} needs labels; give --labels (labels=...)")
        output = config.output or outs[0]
        if output not in outs:
            raise InputError(f"output {output!r} not found; the model has {', '.join(outs)}")
        trainset = _train_set(train, specs)
        notes: list[str] = []
        if calibration is None:
            calib = trainset.head(config.calibration_samples)
            notes.append(
                f"calibration (PTQ and the QAT observers' start): the first {len(calib)} "
                "training samples"
            )
        else:
            calib = load_dataset(calibration, specs, what="calibration data")
            calib = calib.head(config.calibration_samples)
        example = tuple(tensors(torch, trainset, ins, slice(0, 2)))
        with torch_threads(torch, qcfg.threads):
            prepared, loss_fn = prepare(
                torch, module, example, trainset, calib, ins, outs.index(output), qcfg
            )
        inner = replace(
            config, candidates=config.candidates or PTQ_CANDIDATES, final_rounds=0, memory=False
        )

        def shifted(event: str, cand: Candidate, index: int, total: int) -> None:
            if progress:
                progress(event, cand, index, total + 1)

        (work / "ptq").mkdir()
        ptq = search(float_path, data, work / "ptq", inner, calibration=calib, progress=shifted)
        total = len(ptq.candidates) + 2
        desc = f"quantization-aware training ({qcfg.epochs} epochs), QDQ INT8 with learned ranges"
        cand = Candidate(QAT, Recipe(QAT, (), desc))
        report_fn = progress or (lambda *a: None)
        report_fn("build", cand, total - 1, total)
        try:
            t0 = time.perf_counter()
            with torch_threads(torch, qcfg.threads):
                index = outs.index(output)
                stats = fit(torch, prepared, loss_fn, trainset, ins, index, qcfg, on_epoch)
                path, step, info = _build(torch, prepared, calib, (ins, outs), config, work)
            train_step = Step("qat", QATStep(qcfg, len(trainset)))
            steps = [train_step, Step("graph", config.graph), step]
            if config.compact:
                steps.append(Step("compact", CompactConfig()))
            cand.recipe = Recipe(QAT, tuple(steps), desc)
            cand.path, cand.build_seconds = path, time.perf_counter() - t0
            cand.infos = ({"epochs": [s.__dict__ for s in stats], **info},)
            notes_qat = [str(info.pop("note"))] if "note" in info else []
            if info["calibrated_ranges"]:
                placed = info["learned_ranges"] + info["calibrated_ranges"]
                notes_qat.append(
                    f"{info['calibrated_ranges']} of {placed} activation ranges calibrated: "
                    "no fake quantizer in torch watched those tensors"
                )
            cand.note = "; ".join(notes_qat)
            report_fn("evaluate", cand, total - 1, total)
            cand.evaluation, _ = evaluate(
                path,
                data,
                metric,
                reference=_reference(float_path, data, output, config.batch_size),
                output=output,
                threads=config.threads,
                repeats=config.repeats,
                batch_size=config.batch_size,
            )
        except EdgeInferError as exc:  # the PTQ rows still stand: the report says why
            cand.status, cand.reason = "failed", failure(exc, work)
            report_fn("failed", cand, total - 1, total)
        assert ptq.baseline.evaluation is not None
        if cand.evaluation is not None:
            base_value = ptq.baseline.evaluation.metrics[metric.name]
            value = cand.evaluation.metrics[metric.name]
            cand.status, cand.drop = "ok", budget.drop(metric, base_value, value)
            cand.within_budget = budget.within(metric, base_value, value)
            report_fn("done", cand, total - 1, total)
        planned = [*ptq.candidates, cand]
        chosen, message, more = choose(ptq.baseline, planned, metric, budget, config, data)
        notes += [*more, _side_by_side(ptq.candidates, cand, metric.name)]
        if config.memory and chosen.path is not None and chosen.evaluation is not None:
            mem = peak_memory(chosen.path, data.sample(0), config.threads)
            chosen.evaluation = replace(chosen.evaluation, memory_bytes=mem)
        seconds = time.perf_counter() - started
        result = SearchResult(
            metric, budget, config.objective, ptq.baseline, planned, chosen, message, seconds, notes
        )
        bundle_name = name or type(module).__name__.lower()
        source = f"torch.nn.Module {type(module).__name__}"
        bundle = _bundle(result, data, out, bundle_name, version, source, overwrite)
    report_dir = None
    if report:
        report_dir = write_report(
            result,
            report_dir_for(out),
            title=f"edgeinfer optimize (QAT): {bundle_name}",
            extra={"bundle": str(out), "source": source, "qat_epochs": [s.__dict__ for s in stats]},
        )
    return OptimizeResult(bundle, report_dir, result)


def _output_names(path: Path) -> list[str]:
    from edgeinfer.convert.onnx_io import load_onnx

    return [o.name for o in load_onnx(path).graph.output]
