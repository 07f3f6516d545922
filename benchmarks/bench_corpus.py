"""The model corpus (tests/corpus): what ``edgeinfer optimize`` chooses for models nobody here
wrote, against ONNX Runtime's own quantizers on the same data, side by side in one run.

For every ONNX model of the corpus:

- ``edgeinfer optimize`` with ``--max-drop 1%`` (relative) and objective latency, gated on
  the model's own metric where it has labels (accuracy, MAE) and cosine to the FP32 outputs
  otherwise; every candidate it knows is tried;
- ONNX Runtime's recipe as its documentation gives it: ``quant_pre_process`` (shape
  inference and ORT's graph optimization), then ``quantize_dynamic`` (default settings)
  and ``quantize_static`` (QDQ, MinMax, per-tensor) on the same calibration samples;
- the FP32 original, the chosen model and the two ORT baselines are timed round-robin in
  one process (median of ``ROUNDS`` single-sample calls, one thread) and scored on the same
  eval set with the same metric.

LiteRT models of the corpus are listed with the reason optimize gives for them.
The machine's two cores are shared, so only the side-by-side ratios are meaningful.

Run: .venv/bin/python benchmarks/bench_corpus.py [--models id,id] [--rounds 60]
Writes benchmarks/results/corpus.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "corpus"))
from corpus_build import reference
from corpus_models import MODELS, CorpusModel, locate

from _common import write
from edgeinfer.errors import EdgeInferError
from edgeinfer.optimize import SearchConfig, compare_latency, optimize
from edgeinfer.optimize.metrics import compute, parse_metric
from edgeinfer.optimize.passes.base import quiet

THREADS = 1
EVAL = 24  # eval samples per model (real inputs, see tests/corpus/corpus_models.py)
CALIBRATION = 16  # calibration samples, shared by edgeinfer and quantize_static
HEAVY = {"nudenet-320n": 12, "ppocr-det": 12}  # fewer samples for the big convolutional ones


def _batches(feeds: Mapping[str, np.ndarray], model: CorpusModel, size: int) -> Iterator[dict]:
    """Single-model-call chunks of a stacked eval set (silero's state stacks on axis 1)."""
    n = len(next(iter(feeds.values())))
    for start in range(0, n, size):
        chunk = {}
        for name, value in feeds.items():
            if value.ndim == 0:
                chunk[name] = value
            elif model.id == "silero-vad" and name == "state":
                chunk[name] = value[:, start : start + size]
            else:
                chunk[name] = value[start : start + size]
        yield chunk


def _outputs(path: Path, model: CorpusModel, feeds: Mapping[str, np.ndarray], name: str) -> Any:
    parts = [reference(path, chunk)[name] for chunk in _batches(feeds, model, 8)]
    return np.concatenate(parts)


def _score(model: CorpusModel, outputs: np.ndarray, labels: Any, fp32: np.ndarray) -> float:
    return float(compute(parse_metric(model.metric), outputs, labels=labels, reference=fp32))


class _Reader:
    """A rewindable ``CalibrationDataReader`` over single samples."""

    def __init__(self, model: CorpusModel, feeds: Mapping[str, np.ndarray]) -> None:
        self._items = list(_batches(feeds, model, 1))
        self._it = iter(self._items)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def _ort_baselines(src: Path, work: Path, model: CorpusModel, calib: dict) -> dict[str, Any]:
    """ONNX Runtime's pre-process + dynamic / static INT8; a failure is recorded, not raised."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out: dict[str, Any] = {}
    pre = work / "ort-pre.onnx"
    # Symbolic shape inference first (auto_merge for dynamic dims), as ORT recommends; where
    # it cannot finish, ORT's documented fallback skips it (ONNX shape inference and graph
    # optimization still run); where nothing runs, the original is quantized as is.
    errors = []
    for options in ({"auto_merge": True}, {"skip_symbolic_shape": True}):
        try:
            # Symbolic shape inference that gives up saves a scratch model (and its
            # external data) into the working directory: keep that in the work folder.
            here = os.getcwd()
            os.chdir(work)
            try:
                quant_pre_process(os.fspath(src.resolve()), os.fspath(pre.resolve()), **options)
            finally:
                os.chdir(here)
            out["pre_process"] = options
            break
        except Exception as exc:  # recorded as the baseline's own result
            errors.append(_first_line(exc))
    else:
        pre = src
    if errors:
        out["pre_process_errors"] = errors
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(model, calib)
    for name, run in (
        ("ort_dynamic", lambda dst: quantize_dynamic(os.fspath(pre), os.fspath(dst))),
        (
            "ort_static",
            lambda dst: quantize_static(
                os.fspath(pre), os.fspath(dst), reader, quant_format=QuantFormat.QDQ
            ),
        ),
    ):
        dst = work / f"{name}.onnx"
        try:
            run(dst)
            out[name] = dst
        except Exception as exc:
            out[name] = f"failed: {_first_line(exc)}"
    return out


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {text}"[:200]


def bench_model(model: CorpusModel, work: Path, rounds: int) -> dict[str, Any]:
    built = work / "built"
    built.mkdir(exist_ok=True)
    src = locate(model, built)
    row: dict[str, Any] = {"model": model.id, "source": model.source, "exporter": model.exporter}
    n_eval = HEAVY.get(model.id, EVAL) if model.batchable else 1
    eval_feeds = model.make(n_eval, 1)
    labels = model.labels(n_eval, 1) if model.labels is not None else None
    calib = model.make(min(CALIBRATION, n_eval), 2) if model.batchable else eval_feeds
    config = SearchConfig(
        metric=model.metric,
        max_drop="1%",
        objective="latency",
        output=model.output,
        threads=THREADS,
        repeats=20,
        memory=False,
    )
    start = time.perf_counter()
    try:
        outcome = optimize(
            src,
            eval_feeds,
            work / f"{model.id}-opt",
            labels=labels,
            calibration=calib,
            config=config,
            overwrite=True,
        )
    except EdgeInferError as exc:
        row["status"] = "optimize refused: " + str(exc).replace(str(src), src.name)
        return row
    row["search_seconds"] = round(time.perf_counter() - start, 1)
    result = outcome.result
    row["chosen_candidate"] = result.chosen.name
    row["message"] = result.message
    row["candidates"] = {
        c.name: c.status if c.status == "ok" else f"{c.status}: {c.reason}"
        for c in result.candidates
    }
    paths: dict[str, Path] = {"fp32": src, "chosen": outcome.bundle.model_path}
    with quiet():
        baselines = _ort_baselines(src, work, model, calib)
    for name, value in baselines.items():
        if isinstance(value, Path):
            paths[name] = value
        else:
            row[name] = value  # pre-processing notes and baseline failures
    output = model.output or next(iter(reference(src, next(_batches(eval_feeds, model, 1)))))
    fp32_out = _outputs(src, model, eval_feeds, output)
    single = next(_batches(eval_feeds, model, 1))
    latencies = compare_latency(list(paths.values()), single, threads=THREADS, rounds=rounds)
    base_size = src.stat().st_size
    for (name, path), ms in zip(paths.items(), latencies, strict=True):
        out = fp32_out if name == "fp32" else _outputs(path, model, eval_feeds, output)
        row[name] = {
            "latency_ms": round(ms, 4),
            "speedup": round(latencies[0] / ms, 3),
            "size_bytes": path.stat().st_size,
            "size_ratio": round(path.stat().st_size / base_size, 3),
            model.metric: round(_score(model, out, labels, fp32_out), 4),
        }
    row["status"] = "ok"
    print(f"  {model.id}: {row['chosen_candidate']} ({row['search_seconds']} s search)", flush=True)
    return row


def _cell(row: dict[str, Any], key: str, metric: str) -> str:
    value = row.get(key)
    if isinstance(value, str):
        return value.split(":")[0] + " (see json)"
    if not isinstance(value, dict):
        return "-"
    return f"{value['speedup']:.2f}x, {value['size_ratio']:.2f}x size, {metric} {value[metric]:.4g}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | exporter | chosen at --max-drop 1% | FP32 latency | chosen vs FP32 | "
        "ORT quant_pre_process + quantize_dynamic | ORT quant_pre_process + quantize_static |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        model = next(m for m in MODELS if m.id == row["model"])
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {row['exporter']} | {row['status']} | | | | |")
            continue
        metric = model.metric
        fp32 = row["fp32"]
        lines.append(
            f"| {row['model']} | {row['exporter']} | {row['chosen_candidate']} | "
            f"{fp32['latency_ms']:.3f} ms, {metric} {fp32[metric]:.4g} | "
            f"{_cell(row, 'chosen', metric)} | {_cell(row, 'ort_dynamic', metric)} | "
            f"{_cell(row, 'ort_static', metric)} |"
        )
    return "\n".join(lines)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated corpus ids (default: all)")
    parser.add_argument("--rounds", type=int, default=60, help="round-robin timed calls")
    args = parser.parse_args()
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # ORT's graph warnings would drown the table
    wanted = [m for m in MODELS if not args.models or m.id in args.models.split(",")]
    load_before = _load()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        for model in wanted:
            work = Path(tmp) / model.id
            work.mkdir()
            try:
                rows.append(bench_model(model, work, args.rounds))
            except Exception as exc:  # one model's failure is a row, not the end of the run
                rows.append({"model": model.id, "exporter": model.exporter,
                             "status": f"benchmark failed: {_first_line(exc)}"})  # fmt: skip
    table = markdown(rows)
    path = write(
        "corpus",
        {
            "models": rows,
            "threads": THREADS,
            "eval_samples": EVAL,
            "calibration_samples": CALIBRATION,
            "timing": f"median of {args.rounds} round-robin single-sample calls, one process",
            "load_average": {
                "before": load_before,
                "after": [round(x, 2) for x in os.getloadavg()],
            },
            "table": table,
        },
    )
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
