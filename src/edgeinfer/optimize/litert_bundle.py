"""Bundling the LiteRT search's winner: golden samples in the model's own dtypes, the recipe
and the source's layout in the manifest, the search's figures in its metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.data import Dataset

__all__ = ["bundle_tflite"]

_QUANT_TOL = 1e-2  # golden tolerance of integer models: kernels differ by CPU
_GOLDEN = 4


def _golden(path: Path, data: Dataset, signature: bool) -> dict[str, np.ndarray]:
    """Golden inputs by tensor name, in the model's own dtypes (int8 I/O quantized)."""
    from edgeinfer.convert.tflite import open_interpreter, to_model_dtype

    interp = open_interpreter(path)
    ins = {int(d["index"]): d for d in interp.get_input_details()}
    # A model converted at a fixed batch (PyTorch's through litert-torch, MediaPipe's) takes
    # that many samples a call, and no more: its golden call is that size.
    fixed = [
        int(d["shape_signature"][0])
        for d in ins.values()
        if len(d["shape_signature"]) and int(d["shape_signature"][0]) > 0
    ]
    feeds = data.head(min(_GOLDEN, len(data), *fixed)).feeds()
    if signature:
        details = interp.get_signature_runner().get_input_details()
        by_name = {k: ins[int(d["index"])] for k, d in details.items()}
    else:
        by_name = {str(d["name"]): d for d in ins.values()}
    return {
        str(by_name[k]["name"]): to_model_dtype(np.asarray(v), by_name[k]) for k, v in feeds.items()
    }


def bundle_tflite(
    src: Path,
    chosen: Candidate,
    result: SearchResult,
    data: Dataset,
    out: Path,
    layout: str,
    signature: bool,
    name: str | None,
    version: int | None,
    overwrite: bool,
) -> Bundle:
    from edgeinfer.convert.tflite import inspect_tflite

    ev, base = chosen.evaluation, result.baseline.evaluation
    assert ev is not None and base is not None and chosen.path is not None
    metric = result.metric.name
    metrics: dict[str, Any] = {k: round(v, 6) for k, v in ev.metrics.items()}
    metrics.update(
        latency_ms=round(chosen.latency_ms, 4),
        size_bytes=ev.size_bytes,
        optimize={
            "target": "tflite",
            "metric": metric,
            "baseline": round(base.metrics[metric], 6),
            "value": round(ev.metrics[metric], 6),
            "objective": result.objective,
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
        "layout": layout,
        "search": {"metric": metric, "objective": result.objective, "target": "tflite"},
    }
    quantized = inspect_tflite(chosen.path).quantized
    tol = {"atol": _QUANT_TOL, "rtol": _QUANT_TOL} if quantized else {}
    return Bundle.create(
        chosen.path,
        out,
        name=name or src.stem.replace("_", "-").lower(),
        version=version if version is not None else 1,
        golden_inputs=_golden(chosen.path, data, signature),
        metrics=metrics,
        recipe=recipe,
        source=str(src),
        overwrite=overwrite,
        **tol,  # type: ignore[arg-type]
    )
