"""``--target both``: the LiteRT search and the ONNX Runtime search of one TensorFlow model,
and the better of their two winners for the objective.

Both searches gate against the same metric and budget (the ONNX model is the tf2onnx
conversion, checked against the source). Their winners are then timed side by side,
round-robin, through the same ``edgeinfer`` call on each bundle's first golden sample (in
each model's own dtypes), so neither runtime's harness decides. ``size``: the smaller file
wins unless the other is within ``size_margin`` and faster; ``latency``: the faster wins
unless the other is within ``latency_margin`` and smaller. The winning bundle and its
report move to ``out_dir``; the result's notes say what the other world offered.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import Bundle, check_out_dir
from edgeinfer.errors import BundleError, InputError
from edgeinfer.optimize.data import DataSource
from edgeinfer.optimize.pipeline import OptimizeResult, optimize
from edgeinfer.optimize.plan import candidate_names
from edgeinfer.optimize.qat_keras import KerasQAT
from edgeinfer.optimize.report import report_dir_for
from edgeinfer.optimize.search import Progress, SearchConfig
from edgeinfer.optimize.tflite import TFLITE_CANDIDATES, optimize_tflite

__all__ = ["compare_bundles", "optimize_both"]


def compare_bundles(paths: list[Path], rounds: int = 40, threads: int | None = None) -> list[float]:
    """Median milliseconds of single-sample calls of each bundle, round-robin."""
    from edgeinfer.runtime.bench import time_calls
    from edgeinfer.runtime.model import load

    models, feeds = [], []
    for path in paths:
        golden = Bundle.open(path).golden()
        if golden is None:
            raise BundleError(f"{path}: no golden sample to time the bundle on")
        feeds.append({k: np.asarray(v)[:1] for k, v in golden.inputs.items()})
        models.append(load(path, providers=["cpu"], threads=threads))
    try:
        for model, feed in zip(models, feeds, strict=True):
            time_calls(model, feed, 0, warmup=3)
        samples: list[list[float]] = [[] for _ in models]
        order = list(range(len(models)))
        for r in range(rounds):
            for i in order if r % 2 == 0 else order[::-1]:
                samples[i].extend(time_calls(models[i], feeds[i], 1, warmup=0))
    finally:
        for model in models:
            model.close()
    return [float(np.median(s)) for s in samples]


def _split(candidates: tuple[str, ...] | None) -> tuple[Any, Any]:
    if candidates is None:
        return None, None
    onnx_names = set(candidate_names())
    unknown = [c for c in candidates if c not in onnx_names and c not in TFLITE_CANDIDATES]
    if unknown:
        raise InputError(
            f"unknown candidate(s) {', '.join(unknown)}; expected ONNX ones "
            f"({', '.join(candidate_names())}) or TFLite ones ({', '.join(TFLITE_CANDIDATES)})"
        )
    lite = tuple(c for c in candidates if c in TFLITE_CANDIDATES) or None
    onnx = tuple(c for c in candidates if c in onnx_names) or None
    return lite, onnx


def _move(src: Path, dest: Path, overwrite: bool) -> None:
    if dest.exists():
        if not overwrite and (not dest.is_dir() or any(dest.iterdir())):
            raise BundleError(f"{dest} already exists and is not empty (pass --overwrite)")
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    os.replace(src, dest)


def optimize_both(
    model: str | os.PathLike[str],
    eval_data: DataSource,
    out_dir: str | os.PathLike[str],
    *,
    labels: Any = None,
    calibration: DataSource | None = None,
    config: SearchConfig | None = None,
    candidates: tuple[str, ...] | None = None,
    name: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    qat: KerasQAT | None = None,
) -> OptimizeResult:
    """Search a Keras model, SavedModel or ``.tflite`` for LiteRT and for ONNX Runtime; keep
    the better winner (see the module docs). ``qat``: quantization-aware training in the
    LiteRT search (:mod:`.qat_keras`)."""
    from edgeinfer.convert.keras import keras_to_onnx
    from edgeinfer.convert.tflite import tflite_to_onnx

    config = config or SearchConfig()
    src, out = Path(model), Path(out_dir)
    lite_names, onnx_names = _split(candidates)
    check_out_dir(out, overwrite)
    stem = src.stem or "model"
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.both.", dir=out.parent) as tmp:
        work = Path(tmp)
        lite = optimize_tflite(
            src, eval_data, work / "litert", labels=labels, calibration=calibration,
            config=config, candidates=lite_names, name=name or stem, version=version,
            progress=progress, qat=qat,
        )  # fmt: skip
        onnx_file = work / f"{stem}.onnx"
        convert = tflite_to_onnx if src.suffix.lower() == ".tflite" else keras_to_onnx
        convert(src, onnx_file)
        onnx_config = replace(config, candidates=onnx_names)
        ort = optimize(
            onnx_file, eval_data, work / "onnx", labels=labels, calibration=calibration,
            config=onnx_config, name=name or stem, version=version or 1, progress=progress,
        )  # fmt: skip
        lite_ms, ort_ms = compare_bundles(
            [lite.bundle.path, ort.bundle.path], config.final_rounds or 20, config.threads
        )
        lite_size = lite.bundle.model_path.stat().st_size
        ort_size = ort.bundle.model_path.stat().st_size
        if config.objective == "size":
            first, other = (lite, ort) if lite_size <= ort_size else (ort, lite)
            near = max(lite_size, ort_size) <= min(lite_size, ort_size) * (1 + config.size_margin)
            faster = (lite_ms < ort_ms) == (other is lite)
            winner = other if near and faster else first
        else:
            first, other = (lite, ort) if lite_ms <= ort_ms else (ort, lite)
            near = max(lite_ms, ort_ms) <= min(lite_ms, ort_ms) * (1 + config.latency_margin)
            smaller = (lite_size < ort_size) == (other is lite)
            winner = other if near and smaller else first
        world = "LiteRT" if winner is lite else "ONNX Runtime"
        note = (
            f"--target both: {world} wins for {config.objective}: LiteRT's "
            f"{lite.result.chosen.name} {lite_size / 1e3:.1f} kB, {lite_ms * 1e3:.1f} us per "
            f"call; ONNX Runtime's {ort.result.chosen.name} {ort_size / 1e3:.1f} kB, "
            f"{ort_ms * 1e3:.1f} us per call (edgeinfer calls, side by side)"
        )
        winner.result.notes.append(note)
        _move(winner.bundle.path, out, overwrite)
        report = None
        if winner.report_dir is not None:
            report = report_dir_for(out)
            _move(winner.report_dir, report, True)
    return OptimizeResult(Bundle.open(out), report, winner.result)
