"""``edgeinfer optimize`` and ``edgeinfer distill``: the accuracy-gated optimization pipeline.

``optimize`` searches quantization and graph recipes for the fastest (or smallest) model
whose metric stays within ``--max-drop`` of the original's, showing a progress bar per
candidate and ending with the candidate table; the winner is written as a bundle and the
report next to it. ``distill`` trains a smaller student network on a teacher's outputs.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from edgeinfer.errors import InputError

_EVENTS_DONE = ("done", "failed", "skipped")


class _Bars:
    """A rich progress bar per candidate (build, then evaluate) on a terminal; elsewhere
    (output redirected to a file or a pipe, where rich draws nothing until the end) one
    flushed line as each candidate starts and ends, with its status and seconds.

    The bars start with the first event: an input error found before the search begins
    is then printed alone, not after the empty line a stopped live display leaves.
    """

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[int, Any] = {}
        self.started: dict[int, float] = {}
        self.live = False

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.__exit__(None, None, None)

    def _line(self, event: str, cand: Any, index: int, total: int) -> None:
        label = f"[{index}/{total - 1}] {cand.name}" if index else cand.name
        if event in ("start", "build"):
            self.started[index] = time.perf_counter()
            text = f"{label}: {'building' if index else 'measuring'}"
        elif event in _EVENTS_DONE:
            seconds = time.perf_counter() - self.started.get(index, time.perf_counter())
            state = {"done": "ok", "failed": "failed", "skipped": "skipped"}[event]
            if event == "done" and cand.reason:
                state = "screened out"
            text = f"{label}: {state}" + (f" ({seconds:.1f} s)" if index in self.started else "")
        else:
            return
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)  # flushed

    def __call__(self, event: str, cand: Any, index: int, total: int) -> None:
        if not self.console.is_terminal:
            self._line(event, cand, index, total)
            return
        if not self.live:
            self.progress.__enter__()
            self.live = True
        task = self.tasks.get(index)
        label = f"[{index}/{total - 1}] {cand.name}" if index else cand.name
        if task is None:
            task = self.progress.add_task(label, total=2, state="")
            self.tasks[index] = task
        if event in ("start", "build"):
            self.progress.update(
                task, description=label, state="building" if index else "measuring"
            )
        elif event == "evaluate":
            self.progress.update(task, description=label, completed=1, state="measuring")
        elif event in _EVENTS_DONE:
            state = {"done": "ok", "failed": "failed", "skipped": "skipped"}[event]
            if event == "done" and cand.reason:
                state = "screened out"
            self.progress.update(task, description=label, completed=2, state=state)


def _candidate_names() -> tuple[str, ...]:
    from edgeinfer.optimize.plan import candidate_names

    return candidate_names()


def _search_config(
    metric: str | None,
    max_drop: str,
    objective: str,
    candidates: str | None,
    output: str | None,
    threads: int | None,
    repeats: int,
    memory: bool,
    has_labels: bool,
) -> Any:
    from edgeinfer.optimize.search import SearchConfig

    names = None
    if candidates:
        names = tuple(c.strip() for c in candidates.split(",") if c.strip())
    return SearchConfig(
        metric=metric or ("accuracy" if has_labels else "cosine"),
        max_drop=max_drop,
        objective=objective,  # type: ignore[arg-type]
        candidates=names,
        output=output,
        threads=threads,
        repeats=repeats,
        memory=memory,
    )


def _finish(console: Console, outcome: Any) -> None:
    from edgeinfer.optimize.report import candidate_table

    result = outcome.result
    console.print(
        candidate_table(result, title=f"{result.metric.name}, objective {result.objective}")
    )
    colour = "yellow" if result.kept_original else "green"
    console.print(Text(result.message, style=colour))
    for note in result.notes:
        console.print(Text(f"- {note}", style="dim"))
    # Paths are printed whole (soft wrap): a path broken by a newline cannot be copied.
    console.print(f"bundle: {outcome.bundle.path}  (v{outcome.bundle.version})", soft_wrap=True)
    if outcome.report_dir is not None:
        console.print(
            f"report: {outcome.report_dir}/report.md, report.json, report.png", soft_wrap=True
        )


def optimize(
    model: Path = typer.Argument(..., help="Bundle directory, packed .tar, or .onnx file."),
    eval_data: Path = typer.Option(
        ...,
        "--eval",
        help="Eval inputs: .npz (one array per input; 'labels' optional) or .npy; for a "
        "generative bundle, held-out text (.txt).",
    ),
    labels: Path | None = typer.Option(None, help="Labels (.npy, or .npz with one array)."),
    calibration: Path | None = typer.Option(
        None, help="Calibration inputs for static INT8 (.npz/.npy); without: static is skipped."
    ),
    metric: str | None = typer.Option(
        None,
        help="accuracy, topK, f1, mse, mae, cosine, min_cosine, agreement, max_abs_error "
        "(default: accuracy with labels, else cosine); generative: perplexity, agreement.",
    ),
    max_drop: str | None = typer.Option(
        None,
        help="Allowed metric drop: absolute (0.01) or relative (1%); default 0.01, and 3% "
        "(of perplexity) for a generative bundle.",
    ),
    min_agreement: float | None = typer.Option(
        None, help="Generative bundles: least next-token agreement with the float model (0.9)."
    ),
    objective: str = typer.Option("latency", help="latency or size."),
    out: Path = typer.Option(..., "--out", help="Output bundle directory."),
    output: str | None = typer.Option(None, help="Model output the metric reads (default: first)."),
    candidates: str | None = typer.Option(
        None,
        help="Comma-separated candidates (default: all that apply but dynamic-int8-reduce-"
        "range): " + ", ".join(_candidate_names()) + ".",
    ),
    threads: int | None = typer.Option(None, help="Intra-op threads while timing."),
    repeats: int = typer.Option(30, min=1, help="Timed single-sample calls per candidate."),
    name: str | None = typer.Option(None, help="Bundle name (default: the source's)."),
    version: int | None = typer.Option(None, help="Bundle version (default: source's + 1)."),
    memory: bool = typer.Option(True, help="Measure peak memory (a short subprocess each)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle at --out."),
    target: str = typer.Option(
        "auto",
        help="onnx, tflite, both (search both, keep the better) or auto (the source's own "
        "world): MODEL may also be a Keras model "
        "(.keras/.h5), a SavedModel directory or a .tflite file; tflite searches float16, "
        "dynamic-int8, int8, int8-io (TFLiteConverter), aeq-weight-only-int8, "
        "aeq-dynamic-int8, aeq-static-wi8-ai8 (ai-edge-quantizer; aeq-weight-only-int4 and "
        "aeq-static-wi8-ai16 when named in --candidates) on LiteRT.",
    ),
    qat: bool = typer.Option(
        False,
        "--qat",
        help="Also fine-tune with quantization-aware training and let it compete (qat-int8; "
        "a tf-keras .h5 model: tfmot, on LiteRT). Needs --train.",
    ),
    train: Path | None = typer.Option(
        None,
        "--train",
        help="Training data for --qat (.npz: one array per input, and 'labels'; without "
        "labels the float model's outputs are the targets).",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Training epochs for --qat (default 3)."
    ),
) -> None:
    """Find the fastest or smallest model within an accuracy budget; bundle it."""
    from edgeinfer.optimize.pipeline import optimize as run_optimize

    qat_options = _qat_options(qat, train, epochs)
    if _tensorflow_world(model, target):
        if qat_options is not None and target == "onnx":
            raise InputError(
                "--qat fine-tunes a tf-keras model for LiteRT (tfmot): use --target tflite, "
                "both or auto"
            )
        _optimize_tensorflow(
            model, eval_data, out, labels, calibration, metric, max_drop or "0.01", objective,
            candidates, output, threads, repeats, memory, name, version, overwrite, target,
            qat_options,
        )  # fmt: skip
        return
    if qat_options is not None:
        raise InputError(
            f"{model}: --qat fine-tunes a tf-keras model (.h5 or a tf-keras SavedModel); "
            "this is not one"
        )

    if _generative(model):
        unused = {"--labels": labels, "--calibration": calibration, "--output": output}
        given = [k for k, v in unused.items() if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} do not apply to a generative bundle")
        _optimize_generative(
            model, eval_data, out, metric, max_drop, min_agreement, objective, candidates,
            threads, name, version, overwrite,
        )  # fmt: skip
        return
    if min_agreement is not None:
        raise InputError("--min-agreement applies only to a generative bundle")
    config = _search_config(
        metric,
        max_drop or "0.01",
        objective,
        candidates,
        output,
        threads,
        repeats,
        memory,
        labels is not None or _npz_has_labels(eval_data),
    )
    console = Console()
    with _Bars(console) as bars:
        outcome = run_optimize(
            model,
            eval_data,
            out,
            labels=labels,
            calibration=calibration,
            config=config,
            name=name,
            version=version,
            overwrite=overwrite,
            progress=bars,
        )
    _finish(console, outcome)


def _generative(model: Path) -> bool:
    """Whether ``model`` is a generative bundle (its manifest's kind; a .tar is opened)."""
    import json

    manifest = model / "manifest.json"
    if model.is_dir() and manifest.is_file():
        try:
            return bool(json.loads(manifest.read_text("utf-8")).get("kind") == "generative")
        except (OSError, ValueError):
            return False  # opening it says what is wrong
    if model.suffix.lower() == ".tar" and model.is_file():
        from edgeinfer.bundle import Bundle

        return Bundle.open(model).manifest.kind == "generative"
    return False


def _optimize_generative(
    model: Path,
    eval_text: Path,
    out: Path,
    metric: str | None,
    max_drop: str | None,
    min_agreement: float | None,
    objective: str,
    candidates: str | None,
    threads: int | None,
    name: str | None,
    version: int | None,
    overwrite: bool,
) -> None:
    from edgeinfer.optimize.generative import GenerativeConfig
    from edgeinfer.optimize.generative_pipeline import optimize_generative

    options: dict[str, Any] = {
        "metric": metric or "perplexity",
        "max_drop": max_drop or "3%",
        "objective": objective,
    }
    if min_agreement is not None:
        options["min_agreement"] = min_agreement
    if candidates:
        options["candidates"] = tuple(c.strip() for c in candidates.split(",") if c.strip())
    if threads is not None:
        options["threads"] = threads
    config = GenerativeConfig(**options)
    console = Console()
    with _Bars(console) as bars:
        outcome = optimize_generative(
            model,
            out,
            eval_text=eval_text,
            config=config,
            name=name,
            version=version,
            overwrite=overwrite,
            progress=bars,
        )
    _finish(console, outcome)


def _qat_options(qat: bool, train: Path | None, epochs: int | None) -> Any:
    """The QAT request of the command line (None without --qat), checked."""
    if not qat:
        given = [flag for flag, v in (("--train", train), ("--epochs", epochs)) if v is not None]
        if given:
            raise InputError(f"{' and '.join(given)} apply only with --qat")
        return None
    if train is None:
        raise InputError("--qat needs --train TRAIN.npz (training inputs; labels optional)")
    from edgeinfer.optimize.qat_keras import EpochReport, KerasQAT

    err = Console(stderr=True)

    def on_epoch(rep: EpochReport) -> None:
        values = ", ".join(f"{k} {v:.4f}" for k, v in rep.logs.items())
        err.print(
            f"qat-int8: epoch {rep.epoch}/{rep.epochs}: {values} ({rep.seconds:.1f} s)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    return KerasQAT(train=train, epochs=epochs or 3, on_epoch=on_epoch)


def _tensorflow_world(model: Path, target: str) -> bool:
    """Whether the LiteRT search (or a TF source converted to ONNX first) handles ``model``."""
    from edgeinfer.optimize.tflite import is_tensorflow_source

    if target not in ("auto", "onnx", "tflite", "both"):
        raise InputError(f"--target {target!r}: expected onnx, tflite, both or auto")
    tensorflow = is_tensorflow_source(model)
    if target in ("tflite", "both") and not tensorflow:
        raise InputError(
            f"{model}: --target {target} takes a Keras model (.keras/.h5), a SavedModel "
            "directory or a .tflite file (ONNX -> TFLite is not supported)"
        )
    return tensorflow


def _optimize_tensorflow(
    model: Path,
    eval_data: Path,
    out: Path,
    labels: Path | None,
    calibration: Path | None,
    metric: str | None,
    max_drop: str,
    objective: str,
    candidates: str | None,
    output: str | None,
    threads: int | None,
    repeats: int,
    memory: bool,
    name: str | None,
    version: int | None,
    overwrite: bool,
    target: str,
    qat: Any = None,
) -> None:
    import tempfile

    from edgeinfer.optimize.pipeline import optimize as run_optimize
    from edgeinfer.optimize.tflite import optimize_tflite

    has_labels = labels is not None or _npz_has_labels(eval_data)
    console = Console()
    names = None
    if candidates:
        names = tuple(c.strip() for c in candidates.split(",") if c.strip())
    if target == "both":
        from edgeinfer.optimize.targets import optimize_both

        config = _search_config(
            metric, max_drop, objective, None, output, threads, repeats, False, has_labels
        )
        with _Bars(console) as bars:
            outcome = optimize_both(
                model, eval_data, out, labels=labels, calibration=calibration, config=config,
                candidates=names, name=name, version=version, overwrite=overwrite,
                progress=bars, qat=qat,
            )  # fmt: skip
        _finish(console, outcome)
        return
    if target == "onnx":
        from edgeinfer.convert.keras import keras_to_onnx
        from edgeinfer.convert.tflite import tflite_to_onnx

        config = _search_config(
            metric, max_drop, objective, candidates, output, threads, repeats, memory, has_labels
        )
        with tempfile.TemporaryDirectory(prefix="edgeinfer-tf-onnx-") as tmp:
            onnx_path = Path(tmp) / f"{model.stem or 'model'}.onnx"
            convert = tflite_to_onnx if model.suffix.lower() == ".tflite" else keras_to_onnx
            report = convert(model, onnx_path)
            console.print(
                f"converted {model} to ONNX (max abs error {report.max_abs_error:.2g}, cosine "
                f"{report.cosine:.6f}); searching for ONNX Runtime",
                markup=False,
                highlight=False,
            )
            with _Bars(console) as bars:
                outcome = run_optimize(
                    onnx_path, eval_data, out, labels=labels, calibration=calibration,
                    config=config, name=name, version=version, overwrite=overwrite,
                    progress=bars,
                )  # fmt: skip
        _finish(console, outcome)
        return
    config = _search_config(
        metric, max_drop, objective, None, output, threads, repeats, False, has_labels
    )
    with _Bars(console) as bars:
        outcome = optimize_tflite(
            model, eval_data, out, labels=labels, calibration=calibration,
            config=config, candidates=names, name=name, version=version, overwrite=overwrite,
            progress=bars, qat=qat,
        )  # fmt: skip
    _finish(console, outcome)


def _npz_has_labels(path: Path) -> bool:
    import numpy as np

    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "labels" in z.files
    except (OSError, ValueError):
        return False


def _student(spec: str, teacher: Path, output: str | None) -> Any:
    """``mlp:128,64`` (an MLP sized from the teacher's signature) or ``module:factory``."""
    from edgeinfer.optimize.passes.distill import mlp_student
    from edgeinfer.runtime.model import load

    kind, _, arg = spec.partition(":")
    if kind == "mlp":
        try:
            hidden = tuple(int(h) for h in arg.split(",") if h.strip()) or (64,)
        except ValueError:
            raise InputError(f"--student {spec!r}: expected mlp:H1,H2,... (integers)") from None
        with load(teacher, providers=["cpu"]) as m:
            if len(m.inputs) != 1:
                raise InputError("an mlp student needs a one-input teacher; use module:factory")
            sample = m.sample_inputs()
            outs = m.predict(sample)
        name = output or next(iter(outs))
        n_in = int(next(iter(sample.values()))[0].size)
        n_out = int(outs[name][0].size)
        return mlp_student(n_in, n_out, hidden)
    if not arg:
        raise InputError(f"--student {spec!r}: expected mlp:H1,H2 or an import path module:factory")
    try:
        factory = getattr(importlib.import_module(kind), arg)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--student {spec!r}: cannot import {arg} from {kind} ({exc})") from None
    return factory


def distill(
    teacher: Path = typer.Argument(..., help="Teacher: bundle directory, .tar, or .onnx file."),
    data: Path = typer.Option(..., "--data", help="Unlabeled training inputs (.npz/.npy)."),
    student: str = typer.Option(
        "mlp:128,64", help="mlp:H1,H2,... or module:factory (returns a torch.nn.Module)."
    ),
    out: Path = typer.Option(..., "--out", help="Output bundle directory."),
    eval_data: Path | None = typer.Option(None, "--eval", help="Eval inputs (default: --data)."),
    labels: Path | None = typer.Option(None, help="Eval labels (.npy / .npz)."),
    metric: str | None = typer.Option(
        None, help="Metric (default: accuracy with labels, else agreement)."
    ),
    max_drop: str = typer.Option("0.01", help="Allowed metric drop: absolute or relative (1%)."),
    objective: str = typer.Option("latency", help="latency or size."),
    output: str | None = typer.Option(
        None, help="Teacher output to imitate (default: first float)."
    ),
    epochs: int = typer.Option(30, min=1, help="Training epochs."),
    lr: float = typer.Option(3e-3, help="Adam learning rate."),
    batch_size: int = typer.Option(64, min=1, help="Training batch size."),
    loss: str = typer.Option("auto", help="auto, kl, mse or cosine."),
    temperature: float = typer.Option(2.0, help="Softening for the kl loss."),
    threads: int | None = typer.Option(None, help="Threads for training and timing (default 2)."),
    name: str | None = typer.Option(None, help="Bundle name (default: the teacher's)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle at --out."),
) -> None:
    """Train a smaller student on a teacher's outputs (no labels needed); bundle it."""
    from edgeinfer.optimize.pipeline import distill as run_distill

    has_labels = labels is not None or _npz_has_labels(eval_data or data)
    config = _search_config(
        metric or ("accuracy" if has_labels else "agreement"),
        max_drop,
        objective,
        None,
        output,
        threads,
        30,
        False,
        has_labels,
    )
    console = Console()
    net = _student(student, teacher, output)
    options = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "loss": loss,
        "temperature": temperature,
        "threads": threads or 2,
    }
    with _Bars(console) as bars:
        outcome = run_distill(
            teacher,
            data,
            net,
            out,
            eval_data=eval_data,
            labels=labels,
            config=config,
            distill_options=options,
            name=name,
            overwrite=overwrite,
            progress=bars,
        )
    _finish(console, outcome)


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
    app.command("distill")(distill)
