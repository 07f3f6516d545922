"""The accuracy-gated search for LiteRT devices: TFLite variants of a Keras or TF model.

``optimize_tflite(model, eval_data, out_dir, ...)`` takes a Keras model (``.keras``,
``.h5``), a SavedModel directory or a ``.tflite`` file. From a Keras/SavedModel source it
builds the float32 TFLite model (the baseline) and the post-training variants
``TFLiteConverter`` makes (:data:`TFLITE_CANDIDATES`):

* ``float16``: FP16 weights (half the size; dequantized to float on the CPU);
* ``dynamic-int8``: INT8 weights, float activations;
* ``int8``: full integer, calibrated on the calibration data, float inputs and outputs;
* ``int8-io``: the same with int8 inputs and outputs (what a microcontroller feeds);

and, where ai-edge-quantizer is installed, its recipes on the float ``.tflite``
(:mod:`.litert_quantizer`): ``aeq-weight-only-int8``, ``aeq-dynamic-int8`` and
``aeq-static-wi8-ai8`` (calibrated); ``aeq-weight-only-int4`` and ``aeq-static-wi8-ai16``
only when named (``candidates=``, ``--candidates``): XNNPACK runs them slower than float;
``int8-io`` and ``aeq-static-wi8-ai8`` only when named too, as their inputs and outputs are
int8 where the source's are float (a different interface for the caller).

Each is run on LiteRT (XNNPACK, the threads given) over the eval data: the same metrics
(:mod:`.metrics`), the same budget and the same choice (:func:`.search.choose`) as the ONNX
search; integer-I/O models are fed quantized inputs and their outputs dequantized, so every
candidate is judged on the same float data. Latencies are single-sample ``invoke`` calls,
re-timed side by side round-robin. The winner is bundled (golden samples in the model's own
dtypes, the recipe and the source's layout in the manifest) and the report written beside
it. A float ``.tflite`` source gets the ai-edge-quantizer candidates (TFLiteConverter's need
the Keras or SavedModel source); an already quantized one is said to be and kept as it is.

``qat=KerasQAT(train=...)`` adds ``qat-int8``: a tf-keras model fine-tuned with fake
quantization (tfmot), then converted to full INT8 like ``int8`` (:mod:`.qat_keras`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import check_out_dir
from edgeinfer.errors import InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate, SearchResult
from edgeinfer.optimize.data import DataSource, load_dataset
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.litert_bundle import bundle_tflite
from edgeinfer.optimize.litert_eval import evaluate_tflite, side_by_side
from edgeinfer.optimize.litert_quantizer import (
    AEQ_RECIPES,
    AEQRecipe,
    aeq_available,
    quantize_tflite,
)
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.pipeline import OptimizeResult
from edgeinfer.optimize.qat_keras import QAT_CANDIDATE, KerasQAT, check_source, prepare_qat
from edgeinfer.optimize.recipe import Recipe, Step
from edgeinfer.optimize.report import report_dir_for, write_report
from edgeinfer.optimize.search import Progress, SearchConfig, choose, failure
from edgeinfer.tensors import TensorSpec

__all__ = [
    "CONVERTER_CANDIDATES",
    "TFLITE_CANDIDATES",
    "TFLiteConversion",
    "is_tensorflow_source",
    "optimize_tflite",
]

CONVERTER_CANDIDATES = ("float16", "dynamic-int8", "int8", "int8-io")  # TFLiteConverter's
TFLITE_CANDIDATES = (*CONVERTER_CANDIDATES, *AEQ_RECIPES)  # and ai-edge-quantizer's
# INT4 weights and INT16 activations have no fast XNNPACK kernels on a CPU: 2-30x slower
# than float32 on the digits CNN (bench_tflite.py), so they are measured only when asked.
# int8-io and the static aeq recipes change the model's interface (int8 inputs and outputs
# where the source took floats): a caller feeding the source's floats would get raw int8
# codes back from the chosen model, so they too are measured only when named.
_OPT_IN = ("aeq-weight-only-int4", "aeq-static-wi8-ai16", "int8-io", "aeq-static-wi8-ai8")
_MODE = {"float16": "float16", "dynamic-int8": "dynamic", "int8": "int8", "int8-io": "int8-io"}


@dataclass(frozen=True)
class TFLiteConversion:
    """The recipe step of a TFLite candidate: TFLiteConverter with one quantization mode."""

    quantize: str  # float32 | float16 | dynamic | int8 | int8-io
    calibration_samples: int = 0
    layout: str = ""  # the source's layout, kept (NHWC for Keras image models)


def is_tensorflow_source(path: str | os.PathLike[str]) -> bool:
    """A Keras file, a SavedModel directory or a ``.tflite`` file."""
    p = Path(path)
    return p.suffix.lower() in (".keras", ".h5", ".hdf5", ".tflite") or (
        p.is_dir() and (p / "saved_model.pb").is_file()
    )


def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    return min(len(a) for a in arrays.values())


def _arrays(source: DataSource | None, names: list[str]) -> Any:
    """Calibration data as arrays by input name (a path is read like eval data)."""
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        if Path(source).suffix.lower() == ".npy":
            return {names[0]: np.load(os.fspath(source), allow_pickle=False)}
        with np.load(os.fspath(source), allow_pickle=False) as z:
            found = {k: z[k] for k in names if k in z.files}
            return found or {names[0]: z[z.files[0]]}
    if isinstance(source, np.ndarray):
        return {names[0]: source}
    return dict(source) if isinstance(source, Mapping) else source


_FULL_INT8 = ("int8", "int8-io", "aeq-static-wi8-ai8")


def _data_keys(source: DataSource) -> set[str]:
    """The input names an .npz file or a dict of eval data holds (empty for other kinds)."""
    if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".npz"):
        try:
            with np.load(source, allow_pickle=False) as z:
                return set(z.files)
        except (OSError, ValueError):
            return set()  # load_dataset says what is wrong with the file
    return set(source) if isinstance(source, Mapping) else set()


def _signature_io(src: Path, keys: set[str]) -> tuple[list[TensorSpec], list[str]] | None:
    """The serving signature's inputs and outputs of a ``.tflite``, where the eval data is
    keyed by its names (``pixels``, as ``edgeinfer convert`` printed them) and not by the
    tensor names (``serving_default_pixels:0``); None otherwise."""
    from edgeinfer.convert.tflite import open_interpreter

    if not keys:
        return None
    interp = open_interpreter(src)
    signatures = interp.get_signature_list()
    tensors = {str(d["name"]) for d in interp.get_input_details()}
    if not signatures or tensors <= keys:
        return None
    key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
    runner = interp.get_signature_runner(key)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    if not set(inputs) <= keys:
        return None
    specs = []
    for name, d in inputs.items():
        dims = d.get("shape_signature")
        dims = d["shape"] if dims is None or not len(dims) else dims
        shape = tuple(None if int(n) < 0 else int(n) for n in dims)
        dtype = np.dtype(d["dtype"]).name
        if d["quantization"][0] and dtype in ("int8", "uint8", "int16"):
            dtype = "float32"  # fed as floats, quantized on the way in
        specs.append(TensorSpec(name, dtype, shape))
    return specs, list(outputs)


def _qat_hint(planned: list[Candidate]) -> list[str]:
    """A note when every post-training full-INT8 candidate missed the budget."""
    full = [c for c in planned if c.name in _FULL_INT8 and c.status == "ok"]
    if not full or any(c.within_budget for c in full):
        return []
    names = ", ".join(c.name for c in full)
    return [
        f"post-training full INT8 ({names}) missed the budget; quantization-aware training "
        "may recover it: --qat --train TRAIN.npz (a tf-keras .h5 model)"
    ]


def optimize_tflite(
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
    report: bool = True,
    progress: Progress | None = None,
    qat: KerasQAT | None = None,
) -> OptimizeResult:
    """Search the TFLite variants of ``model`` for LiteRT and bundle the best in budget.

    ``qat``: also fine-tune a tf-keras model with quantization-aware training and let its
    full-INT8 conversion compete (``qat-int8``, :mod:`.qat_keras`).

    >>> optimize_tflite("digits.keras", {"pixels": x_test, "labels": y_test},
    ...                 "bundles/digits-litert", calibration={"pixels": x_train[:200]},
    ...                 config=SearchConfig(metric="accuracy", max_drop=0.005,
    ...                                     objective="size"))   # doctest: +SKIP
    """
    from edgeinfer.convert._tf import load_source
    from edgeinfer.convert.keras import keras_to_tflite
    from edgeinfer.convert.tflite import inspect_tflite

    config = config or SearchConfig()
    src, out = Path(model), Path(out_dir)
    if not src.exists():
        raise InputError(f"{src}: file not found")
    if not is_tensorflow_source(src):
        raise InputError(
            f"{src}: a LiteRT search takes a Keras model (.keras/.h5), a SavedModel "
            "directory or a .tflite file"
        )
    default = tuple(c for c in TFLITE_CANDIDATES if c not in _OPT_IN)
    if not aeq_available():
        default = CONVERTER_CANDIDATES
    wanted = candidates if candidates is not None else default
    unknown = [c for c in wanted if c not in TFLITE_CANDIDATES]
    if unknown:
        raise InputError(
            f"unknown TFLite candidate(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(TFLITE_CANDIDATES)}"
        )
    metric = parse_metric(config.metric)
    budget = Budget.parse(config.max_drop)
    if qat is not None:
        check_source(src)  # a Keras 3 model or a .tflite is refused before any work
    check_out_dir(out, overwrite)
    started = time.perf_counter()
    report_fn = progress or (lambda *a: None)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.work.", dir=out.parent) as tmp:
        work = Path(tmp)
        planned: list[Candidate] = []
        if src.suffix.lower() == ".tflite":
            info = inspect_tflite(src)
            signature, layout, base_path = False, "", src
            specs = [TensorSpec(s.name, s.dtype, s.shape) for s in info.inputs]
            if info.int_io:
                specs = [TensorSpec(s.name, "float32", s.shape) for s in specs]
            outputs = list(info.outputs)
            named = _signature_io(src, _data_keys(eval_data))
            if named is not None:  # fed and read by the signature's names
                signature, (specs, outputs) = True, named
            if info.float16_weights:
                what = (
                    "a .tflite with float16 weights (float arithmetic): the ai-edge-quantizer "
                    "candidates start from its weights restored to float32"
                )
            elif info.quantized:
                what = "an already quantized (integer) .tflite: measured as it is"
            else:
                what = "a float .tflite"
            notes.append(
                f"the source is {what}; TFLiteConverter's candidates need its Keras or "
                "SavedModel source"
            )
            for cname in wanted:
                why = "" if cname in AEQ_RECIPES else "needs the Keras/SavedModel source"
                planned.append(Candidate(cname, status="skipped" if why else "pending", reason=why))
            source_obj = None
        else:
            source_obj = load_source(src, work)
            signature, layout = True, source_obj.layout
            specs = [TensorSpec(s.name, s.dtype, s.shape) for s in source_obj.inputs]
            outputs = list(source_obj.outputs)
            base_path = work / "float32.tflite"
        data = load_dataset(eval_data, specs, labels=labels, what="eval data")
        if metric.needs_labels and data.labels is None:
            raise InputError(f"metric {metric.name!r} needs labels; give --labels (labels=...)")
        output = config.output or outputs[0]
        if output not in outputs:
            raise InputError(f"output {output!r} not found; the model has {', '.join(outputs)}")
        calib = _arrays(calibration, [s.name for s in specs])
        prepared = None if qat is None else prepare_qat(qat, src, specs, outputs)
        base_recipe = None
        if source_obj is not None:
            keras_to_tflite(source_obj.saved_model, base_path, inputs=None)
            base_recipe = Recipe(
                "float32", (Step("tflite_convert", TFLiteConversion("float32", 0, layout)),)
            )
            planned.extend(Candidate(cname) for cname in wanted)
        if prepared is not None:
            planned.append(Candidate(QAT_CANDIDATE))
        baseline = Candidate("original", recipe=base_recipe, status="pending", path=base_path)
        total = len(planned) + 1
        report_fn("start", baseline, 0, total)
        base_eval, reference, base_timer = evaluate_tflite(
            base_path, data, config, output, signature, None
        )
        baseline.evaluation, baseline.status = base_eval, "ok"
        baseline.within_budget, baseline.drop = True, 0.0
        report_fn("done", baseline, 0, total)
        base_value = base_eval.metrics[metric.name]
        timers = [base_timer]
        timed = [baseline]
        for index, cand in enumerate(planned, start=1):
            if cand.status == "skipped":
                report_fn("skipped", cand, index, total)
                continue
            if cand.name == QAT_CANDIDATE:
                pass  # its recipe is known once it has trained (the loss it used)
            elif cand.name in AEQ_RECIPES:
                n_cal = 0 if calib is None else min(_rows(calib), config.calibration_samples)
                aeq = AEQRecipe(AEQ_RECIPES[cand.name], n_cal if "static" in cand.name else 0)
                cand.recipe = Recipe(cand.name, (Step("ai_edge_quantizer", aeq),), aeq.recipe)
            else:
                mode = _MODE[cand.name]
                if mode.startswith("int8") and calib is None:
                    cand.status = "skipped"
                    cand.reason = "full INT8 needs calibration data (--calibration)"
                    report_fn("skipped", cand, index, total)
                    continue
                n_cal = min(_rows(calib), config.calibration_samples) if calib else 0
                step = TFLiteConversion(mode, n_cal if mode.startswith("int8") else 0, layout)
                cand.recipe = Recipe(cand.name, (Step("tflite_convert", step),), f"TFLite {mode}")
            report_fn("build", cand, index, total)
            path = work / f"{cand.name}.tflite"
            t0 = time.perf_counter()
            try:
                if cand.name == QAT_CANDIDATE:
                    assert prepared is not None
                    qstep, n_cal, train_s = prepared.train_and_convert(
                        path, work, calib, config.calibration_samples
                    )
                    conv_step = TFLiteConversion("int8", n_cal, layout)
                    cand.recipe = Recipe(
                        cand.name,
                        (Step("qat", qstep), Step("tflite_convert", conv_step)),
                        f"quantization-aware training ({qstep.epochs} epochs), TFLite int8",
                    )
                    plural = "s" if qstep.epochs != 1 else ""
                    cand.note = (
                        f"fine-tuned {qstep.epochs} epoch{plural} on {qstep.train_samples} "
                        f"samples ({train_s:.1f} s)"
                    )
                elif cand.name in AEQ_RECIPES:
                    quantize_tflite(base_path, cand.name, path, calib, config.calibration_samples)
                else:
                    assert source_obj is not None
                    conv = keras_to_tflite(
                        source_obj.saved_model,
                        path,
                        quantize=_MODE[cand.name],
                        calibration=calib,
                        atol=float("inf"),  # the gate below judges accuracy, on real data
                        min_cosine=-1.0,
                    )
                    cand.note = "; ".join(n for n in conv.notes if "calibrated on" in n)
                cand.path, cand.build_seconds = path, time.perf_counter() - t0
                assert cand.recipe is not None
                cand.infos = tuple(s.to_dict() for s in cand.recipe.steps)
                report_fn("evaluate", cand, index, total)
                ev, _, timer = evaluate_tflite(path, data, config, output, signature, reference)
            except NotApplicable as exc:
                cand.status, cand.reason = "skipped", failure(exc, work)
                report_fn("skipped", cand, index, total)
                continue
            except Exception as exc:  # one broken candidate must not end the whole search
                cand.status, cand.reason = "failed", failure(exc, work)
                report_fn("failed", cand, index, total)
                continue
            value = ev.metrics[metric.name]
            cand.evaluation, cand.status = ev, "ok"
            cand.drop = budget.drop(metric, base_value, value)
            cand.within_budget = budget.within(metric, base_value, value)
            timers.append(timer)
            timed.append(cand)
            report_fn("done", cand, index, total)
        if qat is None and source_obj is not None:
            notes.extend(_qat_hint(planned))
        if config.final_rounds > 0 and len(timers) > 1:
            for cand, ms in zip(timed, side_by_side(timers, config.final_rounds), strict=True):
                cand.side_by_side_ms = ms
            notes.append(
                f"latencies re-timed side by side: {config.final_rounds} round-robin "
                f"single-sample LiteRT invokes of the original and {len(timers) - 1} candidates"
            )
        chosen, message, more = choose(
            baseline, planned, metric, budget, replace(config, final_rounds=0), data
        )
        notes.extend(more)
        result = SearchResult(
            metric,
            budget,
            config.objective,
            baseline,
            planned,
            chosen,
            message,
            time.perf_counter() - started,
            notes,
        )
        bundle = bundle_tflite(
            src, chosen, result, data, out, layout, signature, name, version, overwrite
        )
    report_dir = None
    if report:
        report_dir = write_report(
            result,
            report_dir_for(out),
            title=f"edgeinfer optimize (LiteRT): {src.stem}",
            extra={"bundle": str(out), "source": str(src), "target": "tflite"},
        )
    return OptimizeResult(bundle, report_dir, result)
