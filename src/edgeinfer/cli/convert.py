"""``edgeinfer convert SRC --to onnx|tflite --out PATH``: a model file to ONNX or TFLite.

The command line face of :mod:`edgeinfer.convert`. Sources it reads:

- a Keras model (``.keras``, legacy ``.h5``) or a TensorFlow SavedModel directory: to ONNX
  (tf2onnx) or to TFLite (TFLiteConverter: builtin operators unless ``--flex``; ``--quantize``
  for the post-training variants);
- a ``.tflite`` file: to ONNX (tf2onnx's TFLite path; unsupported operators are named);
- a PyTorch program saved with ``torch.export.save`` (``.pt2``): to ONNX (torch.onnx) or to
  TFLite (litert-torch, float32, the program's shapes and NCHW layout kept), or a
  TorchScript module saved with ``torch.jit.save`` (``.pt``/``.pth`` holding a
  ``ScriptModule``): to ONNX only (litert-torch converts ``torch.export`` programs);
- a fitted scikit-learn estimator or pipeline pickled with joblib or pickle (``.joblib``,
  ``.pkl``, ``.pickle``). Unpickling runs code from the file: convert only your own files.

Every conversion is checked against the source framework on sample inputs (``--inputs``, or
the example inputs a ``.pt2`` program was exported with) before the file is reported.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console

from edgeinfer.convert.errors import ConversionError
from edgeinfer.errors import InputError

_TORCH = (".pt2", ".pt", ".pth")
_SKLEARN = (".joblib", ".pkl", ".pickle")
_KERAS = (".keras", ".h5", ".hdf5")
_TARGETS = ("onnx", "tflite")


def _sample_arrays(inputs: Path | None) -> list[np.ndarray] | None:
    """Sample inputs from a file, in the order the model takes them."""
    if inputs is None:
        return None
    from edgeinfer.cli._common import read_inputs

    data = read_inputs(inputs)
    if isinstance(data, dict):
        return [np.asarray(v) for v in data.values()]
    return [np.asarray(data)]


def _Program(torch: Any, graph: Any) -> Any:
    """Wrap an exported program's module, which refuses ``eval()``, for the exporter.

    The graph is kept out of the wrapper's children, so ``eval()`` reaches only the wrapper;
    an exported program is already in inference form.
    """

    class Program(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.__dict__["graph"] = graph
            for param in graph.parameters():  # traced as constants of the exported graph
                param.requires_grad_(False)

        def forward(self, *args: Any) -> Any:
            return self.__dict__["graph"](*args)

    return Program()


def _dynamic_batch(torch: Any, program: Any) -> bool:
    """True when every input of an exported program has a symbolic first dimension."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.users]
    user = set(program.graph_signature.user_inputs)
    shapes = [getattr(n.meta.get("val"), "shape", None) for n in inputs if n.name in user]
    return bool(shapes) and all(
        s is not None and len(s) > 0 and isinstance(s[0], torch.SymInt) for s in shapes
    )


def _load_torch(path: Path, samples: list[np.ndarray] | None) -> tuple[Any, tuple[Any, ...], bool]:
    from edgeinfer.convert.torch import import_torch

    torch = import_torch("Converting a PyTorch file")
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(os.fspath(path))
        except Exception as exc:
            raise ConversionError(
                f"{path}: not a program saved with torch.export.save ({type(exc).__name__})"
            ) from exc
        module = _Program(torch, program.module())
        dynamic = _dynamic_batch(torch, program)
        example = samples if samples is not None else getattr(program, "example_inputs", None)
        if isinstance(example, tuple) and len(example) == 2 and isinstance(example[1], dict):
            example = example[0]  # (args, kwargs) as torch.export records them
    else:
        try:
            module = torch.jit.load(os.fspath(path), map_location="cpu")
        except Exception as exc:
            raise ConversionError(
                f"{path}: not a TorchScript module saved with torch.jit.save "
                f"({type(exc).__name__}); save a program with torch.export.save (.pt2) or a "
                "module with torch.jit.save"
            ) from exc
        example = samples
        dynamic = True
    if not example:
        raise InputError(
            f"{path}: give sample inputs with --inputs FILE (.npy or .npz, batch on axis 0); "
            "the file holds no example inputs"
        )
    args = tuple(
        torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        for a in example
    )
    return module, args, dynamic


def _load_sklearn(path: Path) -> Any:
    try:
        if path.suffix == ".joblib":
            import joblib  # type: ignore[import-untyped]

            return joblib.load(path)
        with path.open("rb") as f:
            return pickle.load(f)  # the user's own file; documented in --help
    except ImportError as exc:
        raise InputError(
            f"{path}: reading .joblib files needs joblib (pip install joblib)"
        ) from exc
    except Exception as exc:
        raise ConversionError(
            f"{path}: cannot unpickle the estimator ({type(exc).__name__}: {exc})"
        ) from exc


def convert(
    src: Path = typer.Argument(
        ...,
        help="A Keras model (.keras/.h5), a SavedModel directory, a .tflite file, a .pt2 "
        "(torch.export) or .pt (TorchScript) file, or a pickled scikit-learn estimator "
        "(.joblib/.pkl: unpickling runs the file's code, convert only your own).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the .onnx/.tflite file."),
    to: str = typer.Option("onnx", "--to", help="Target format: onnx or tflite."),
    inputs: Path | None = typer.Option(
        None, "--inputs", "-i", help="Sample inputs (.npy/.npz/.json) for the parity check."
    ),
    opset: int = typer.Option(17, help="ONNX opset to write."),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="TFLite only: dynamic, float16, int8 (float I/O) or int8-io (int8 I/O).",
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="TFLite int8: calibration inputs (.npy/.npz), ~200 samples."
    ),
    flex: bool = typer.Option(
        False,
        "--flex",
        help="TFLite only: allow TensorFlow (Flex) operators; the device then needs the "
        "Flex delegate.",
    ),
) -> None:
    """Convert a model file to ONNX or TFLite and check it against the source framework."""
    if to not in _TARGETS:
        raise InputError(f"--to {to!r} is not supported; expected 'onnx' or 'tflite'")
    if not src.exists():
        raise InputError(f"{src}: file not found")
    if out.suffix != f".{to}":
        raise InputError(f"--out {out}: expected a path ending in .{to} for --to {to}")
    suffix = src.suffix.lower()
    keras = suffix in _KERAS or _is_saved_model(src)
    if to == "tflite" and suffix in (".pt", ".pth"):
        raise InputError(
            f"{src}: a TorchScript module cannot go to TFLite (litert-torch converts "
            "torch.export programs); save the module with torch.export.save (.pt2)"
        )
    if to == "tflite" and not keras and suffix != ".pt2":
        raise InputError(
            f"{src}: --to tflite takes a Keras model (.keras/.h5), a SavedModel directory or "
            "a torch.export program (.pt2)"
        )
    if (quantize or calibration or flex) and not (to == "tflite" and keras):
        raise InputError(
            "--quantize, --calibration and --flex apply to --to tflite from a Keras model or "
            "SavedModel only (a PyTorch model converts as float32: edgeinfer optimize "
            "quantizes the .tflite)"
        )
    samples = _sample_arrays(inputs)
    console = Console()
    if keras or suffix == ".tflite":
        report = _convert_tensorflow(src, out, to, samples, opset, quantize, calibration, flex)
    elif suffix in _TORCH:
        from edgeinfer.convert.torch import torch_to_onnx
        from edgeinfer.convert.torch_tflite import torch_to_tflite

        module, args, dynamic = _load_torch(src, samples)
        try:
            if to == "tflite":
                report = torch_to_tflite(module, args, out)
            else:
                report = torch_to_onnx(module, args, out, opset=opset, dynamic_batch=dynamic)
        except (AssertionError, RuntimeError, TypeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            shapes = [list(a.shape) for a in args]
            raise ConversionError(
                f"{src}: the model fails on sample inputs of shapes {shapes}: {first}"
            ) from exc
    elif suffix in _SKLEARN:
        from edgeinfer.convert.sklearn import sklearn_to_onnx

        estimator = _load_sklearn(src)
        sample = samples[0] if samples else None
        n_features = getattr(estimator, "n_features_in_", None)
        if sample is None and n_features is None:
            raise InputError(
                f"{src}: give sample rows with --inputs FILE; the estimator does not say how "
                "many features it takes"
            )
        report = sklearn_to_onnx(
            estimator,
            out,
            sample=sample,
            n_features=None if sample is not None else int(n_features or 0),
            opset=opset,
        )
    else:
        raise InputError(
            f"{src}: unknown model file {suffix or '(no suffix)'!r}; expected .keras, .h5, "
            "a SavedModel directory, .tflite, .pt2, .pt, .pth, .joblib, .pkl or .pickle"
        )
    if report.cosine is not None and report.cosine != report.cosine:  # NaN: not run
        checked = "not checked against the source (see below)"
    elif report.cosine is not None:
        on = (
            "the given inputs"
            if samples is not None
            else "the program's example inputs"
            if suffix == ".pt2"
            else "random inputs made from its shapes"
        )
        checked = (
            f"max abs error {report.max_abs_error:.2g}, cosine {report.cosine:.6f} against "
            f"the source on {on}"
        )
    elif samples is not None or suffix == ".pt2":
        checked = f"max abs error {report.max_abs_error:.2g} against the source"
    else:
        checked = "not checked (no sample inputs: pass --inputs FILE)"
    what = f"opset {report.opset}" if report.target == "onnx" else "TFLite"
    layout = f"; layout {report.layout}" if report.layout else ""
    console.print(
        f"wrote {report.path} ({what}; inputs {', '.join(report.input_names)}; "
        f"outputs {', '.join(report.output_names)}{layout}); {checked}",
        markup=False,
        highlight=False,
    )
    for note in report.notes:
        console.print(f"  {note}", markup=False, highlight=False)


def _is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def _convert_tensorflow(
    src: Path,
    out: Path,
    to: str,
    samples: list[np.ndarray] | None,
    opset: int,
    quantize: str | None,
    calibration: Path | None,
    flex: bool,
) -> Any:
    from edgeinfer.convert.keras import FlexOpsWarning, keras_to_onnx, keras_to_tflite
    from edgeinfer.convert.tflite import tflite_to_onnx

    if src.suffix.lower() == ".tflite":
        return tflite_to_onnx(src, out, inputs=samples, opset=opset)
    if to == "onnx":
        return keras_to_onnx(src, out, inputs=samples, opset=opset)
    calib = _sample_arrays(calibration)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlexOpsWarning)
        report = keras_to_tflite(
            src, out, inputs=samples, quantize=quantize, calibration=calib, flex=flex
        )
    for w in caught:
        if issubclass(w.category, FlexOpsWarning):
            Console(stderr=True).print(f"warning: {w.message}", markup=False, highlight=False)
    return report


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
