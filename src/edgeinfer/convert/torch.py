"""PyTorch ``nn.Module`` -> ONNX, with a dynamic batch axis and a numerical check.

The export uses torch's TorchScript-based exporter (``dynamo=False``): it is fast for the
small and medium models edgeinfer targets and writes the operator patterns that ONNX
Runtime's graph and transformer optimizers fuse. Opset 17 is the default: every ONNX
Runtime release of the last years runs it, it has ``LayerNormalization``, and quantization
tools handle it well. After export the file is loaded in ONNX Runtime and its outputs are
compared with torch's on the example inputs and on a batch of another size (which proves
the batch axis really is dynamic). A mismatch is a :class:`ConversionError`.

>>> from edgeinfer.convert import torch_to_onnx
>>> torch_to_onnx(net, torch.randn(4, 1, 8, 8), "cnn.onnx",
...               input_names=["pixels"], output_names=["logits"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.onnx_io import load_onnx, save_onnx
from edgeinfer.errors import MissingDependencyError

__all__ = ["DEFAULT_OPSET", "ConversionReport", "import_torch", "torch_to_onnx"]

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion wrote and how closely the ONNX model reproduces the original."""

    path: Path
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_error: float  # largest |onnx - original| over the checked outputs
    cosine: float | None = None  # smallest output cosine with the original (TF routes)
    layout: str = ""  # the source's image layout, kept as it is: NHWC, NCHW, "" (no image)
    target: str = "onnx"  # onnx | tflite (opset is 0 for TFLite)
    notes: tuple[str, ...] = ()  # what the conversion had to do that the user should know


def import_torch(purpose: str = "Converting a PyTorch model") -> Any:
    """``torch``, or :class:`MissingDependencyError` with the install hint."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "torch", purpose) from exc
    return torch


def as_tensors(
    torch: Any, given: Any, what: str, error: type[Exception] = ConversionError
) -> tuple[Any, ...]:
    """One tensor per ``forward()`` argument from a tensor, an array or a sequence of them
    (arrays become tensors); anything else is ``error`` naming ``what`` it was."""
    items = given if isinstance(given, (tuple, list)) else (given,)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.ascontiguousarray(item))
        if not isinstance(item, torch.Tensor):
            raise error(
                f"{what} {i} is a {type(item).__name__}; expected a torch.Tensor or "
                "numpy array (one per forward() argument)"
            )
        out.append(item)
    return tuple(out)


def _as_tensors(torch: Any, example: Any) -> tuple[Any, ...]:
    out = as_tensors(torch, example, "example input")
    for i, item in enumerate(out):
        if item.dim() == 0:
            raise ConversionError(f"example input {i} is a scalar; expected a batch [N, ...]")
    return out


def _names(given: Sequence[str] | None, n: int, stem: str) -> list[str]:
    if given is None:
        return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]
    names = list(given)
    if len(names) != len(set(names)):
        raise ConversionError(f"{stem} names {names} contain duplicates")
    return names


def torch_to_onnx(
    module: Any,
    example_inputs: Any,
    out_path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,  # absolute tolerance of the ONNX-vs-torch check
    rtol: float = 1e-3,  # relative tolerance of the ONNX-vs-torch check
) -> ConversionReport:
    """Export ``module`` (put in eval mode) to ONNX at ``out_path`` and check it.

    ``example_inputs``: one tensor/array or a tuple, one per ``forward`` argument, with the
    batch on axis 0. ``dynamic_batch`` makes axis 0 of every input and output the symbol
    ``"batch"``; ``dynamic_axes`` adds more (``{"input_ids": {1: "sequence"}}``).
    """
    torch = import_torch()
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not 7 <= opset <= 21:
        raise ConversionError(f"opset {opset} is not supported; choose 7..21 (default 17)")
    args = _as_tensors(torch, example_inputs)
    module.eval()
    with torch.no_grad():
        want = module(*args)
    wants = _outputs(torch, want)
    in_names = _names(input_names, len(args), "input")
    out_names = _names(output_names, len(wants), "output")
    if len(in_names) != len(args):
        raise ConversionError(
            f"{len(in_names)} input names for {len(args)} example inputs; give one name each"
        )
    if len(out_names) != len(wants):
        raise ConversionError(
            f"{len(out_names)} output names for {len(wants)} model outputs; give one name each"
        )
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in (*in_names, *out_names)}
    for name, extra in (dynamic_axes or {}).items():
        if name not in in_names and name not in out_names:
            raise ConversionError(
                f"dynamic_axes names {name!r}, which is not an input or output "
                f"({', '.join(in_names + out_names)})"
            )
        axes.setdefault(name, {}).update(extra)
    dest = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                # The exporter announces tracing caveats and its own deprecation as warnings.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    os.fspath(raw),
                    dynamo=False,
                    input_names=in_names,
                    output_names=out_names,
                    dynamic_axes=axes or None,
                    opset_version=opset,
                    do_constant_folding=True,
                )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConversionError(
                f"torch.onnx.export failed for {type(module).__name__}: {first}"
            ) from exc
        save_onnx(load_onnx(raw), dest)
    err = 0.0
    if check:
        err = _check(
            torch, module, args, wants, dest, in_names, out_names, dynamic_batch, atol, rtol
        )
    return ConversionReport(dest, opset, tuple(in_names), tuple(out_names), err)


def _outputs(torch: Any, value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    if isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values()):
        return list(value.values())
    raise ConversionError(
        f"forward() returned a {type(value).__name__}; expected a tensor, a tuple of tensors "
        "or a dict of tensors"
    )


def _check(
    torch: Any,
    module: Any,
    args: tuple[Any, ...],
    wants: list[Any],
    path: Path,
    in_names: list[str],
    out_names: list[str],
    dynamic_batch: bool,
    atol: float,
    rtol: float,
) -> float:
    """Max abs error of ONNX Runtime vs torch; raises if outside the tolerance."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(f"{path}: ONNX Runtime cannot load the exported model") from exc
    cases = [(args, wants)]
    if dynamic_batch and args[0].shape[0] != 3:
        # A batch of another size proves axis 0 is really dynamic.
        other = tuple(torch.cat([a[:1]] * 3) for a in args)
        with torch.no_grad():
            cases.append((other, _outputs(torch, module(*other))))
    worst = 0.0
    for feeds_t, expected in cases:
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(in_names, feeds_t, strict=True)}
        try:
            got = session.run(out_names, feeds)
        except Exception as exc:
            shapes = {n: list(v.shape) for n, v in feeds.items()}
            raise ConversionError(
                f"{path}: the exported model fails on inputs of shapes {shapes}"
            ) from exc
        for name, g, w in zip(out_names, got, expected, strict=True):
            w_np = w.detach().cpu().numpy()
            if g.shape != w_np.shape:
                raise ConversionError(
                    f"{path}: output {name!r} has shape {list(g.shape)} in ONNX but "
                    f"{list(w_np.shape)} in torch"
                )
            if g.size == 0:
                continue
            diff = np.abs(g.astype(np.float64) - w_np.astype(np.float64))
            err = float(diff.max())
            worst = max(worst, err)
            if not np.all(diff <= atol + rtol * np.abs(w_np)):
                raise ConversionError(
                    f"{path}: output {name!r} differs from torch by up to {err:.3g} "
                    f"(tolerance atol={atol:g}, rtol={rtol:g}); the export is not faithful"
                )
    return worst
