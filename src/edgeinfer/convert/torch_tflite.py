"""PyTorch ``nn.Module`` -> TFLite with litert-torch, checked against torch on the samples.

litert-torch (the successor of ai-edge-torch) exports the module with ``torch.export`` and
lowers the program to a TFLite flatbuffer. :func:`torch_to_tflite` names the signature's
inputs and outputs (``pixels`` in, ``logits`` out, or ``input``/``output`` by default), runs
the written file on LiteRT and compares every output with torch's on the same samples (max
absolute error and cosine); beyond the tolerance a :class:`ConversionError` names the worst
output.

What the file keeps and what it does not:

- Layout stays the module's: an NCHW image model takes NCHW in LiteRT too (litert-torch's
  channel-last wrapper is not applied; the report records ``NCHW``).
- Shapes are the samples' shapes, batch included: litert-torch 0.10 cannot lower a symbolic
  batch (its JAX lowering of ``aten.mul`` asserts on the symbolic size), and a device model
  is fixed-size anyway.
- int64 inputs and outputs become int32 (LiteRT's kernels are 32-bit; litert-torch's default).
- No quantization: the float32 model. ``edgeinfer optimize model.tflite`` searches LiteRT's
  quantized variants (dynamic-range, full INT8, float16, ai-edge-quantizer recipes).

Installing: litert-torch 0.10 (and its converter, litert-converter 0.5) cannot be installed
with pip's resolver here: litert-converter requires ``xdsl==0.28.0``, which pins
``typing-extensions<4.13``; resolving that downgrades typing_extensions 4.16 -> 4.12.2 and,
through it, pydantic 2.14 -> 2.11 (pydantic-core 2.50 -> 2.33). litert-torch also lists
transformers, kagglehub, sentencepiece and fire it never imports for this conversion. The
Makefile installs ``litert-torch==0.10.0 litert-converter==0.5.0 xdsl==0.28.0`` with
``--no-deps`` plus what the conversion imports (``jax``/``jaxlib`` 0.10.2, CPU wheels,
~380 MB unpacked; ``torchao`` 0.18), none of which moves torch, numpy, protobuf or pydantic.

>>> from edgeinfer.convert import torch_to_tflite
>>> torch_to_tflite(net, torch.randn(1, 1, 8, 8), "cnn.tflite",
...                 input_names=["pixels"], output_names=["logits"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer._atomic import replacing
from edgeinfer.convert._tf import check_parity, drop_import_noise, import_tf
from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.tflite import run_tflite
from edgeinfer.convert.torch import ConversionReport, as_tensors, import_torch
from edgeinfer.errors import InputError, MissingDependencyError

__all__ = ["LITERT_TORCH_INSTALL", "torch_to_tflite"]

# litert-torch's own requirements clash with this environment (see the module docstring).
LITERT_TORCH_INSTALL = (
    "pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0 xdsl==0.28.0 "
    "torchao==0.18.0 jax==0.10.2 jaxlib==0.10.2"
)


def _import_litert_torch() -> Any:
    import_tf("Converting a PyTorch model to TFLite")  # its conversion loads TensorFlow
    try:
        with _quiet(), drop_import_noise():  # its own libraries print TensorFlow's notes again
            import litert_torch  # type: ignore[import-untyped,import-not-found]
    except ImportError as exc:
        err = MissingDependencyError(
            "litert-torch", "tensorflow", "Converting a PyTorch model to TFLite"
        )
        # No extra can carry litert-torch (its pins clash): the hint is the pip line.
        ImportError.__init__(
            err,
            "Converting a PyTorch model to TFLite needs the 'litert-torch' package, which is "
            f"not installed (its requirements clash with edgeinfer's; {exc.name or exc}). "
            f"Install it with: {LITERT_TORCH_INSTALL}",
        )
        raise err from exc
    litert_torch.config.show_progress = False
    return litert_torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converter's progress lines, deprecation warnings and log chatter kept away."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)  # "converted in training mode" and torchao's notices
        try:
            yield
        finally:
            root.setLevel(level)


def _names(given: Sequence[str] | None, n: int, stem: str) -> list[str]:
    if given is None:
        return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]
    names = list(given)
    if len(names) != n:
        raise InputError(f"{len(names)} {stem} names for {n} {stem}s; give one name each")
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        raise InputError(
            f"{stem} names {names}: expected distinct Python identifiers (they become the "
            "TFLite signature's names)"
        )
    return names


def _tensors(torch: Any, samples: Any) -> tuple[Any, ...]:
    out = tuple(t.detach() for t in as_tensors(torch, samples, "sample input", InputError))
    if not out:
        raise InputError("no sample inputs; give one tensor per forward() argument")
    return tuple(out)


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


def _named(torch: Any, module: Any, in_names: list[str], out_names: list[str]) -> Any:
    """``module`` called with keyword inputs and returning a dict: litert-torch takes the
    signature's names from them. The module stays a child (its weights are the export's)."""

    class Named(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, **inputs: Any) -> dict[str, Any]:
            got = _outputs(torch, self.inner(*(inputs[n] for n in in_names)))
            return dict(zip(out_names, got, strict=True))

    return Named().eval()


def _lowered(value: np.ndarray) -> np.ndarray:
    """What litert-torch makes of a dtype without ``enable_x64``: 64-bit -> 32-bit."""
    if value.dtype == np.int64:
        return value.astype(np.int32)
    if value.dtype == np.float64:
        return value.astype(np.float32)
    return value


def torch_to_tflite(
    module: Any,
    sample_inputs: Any,
    out_path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    atol: float = 1e-4,  # parity tolerance (absolute, scaled by outputs above 1)
    min_cosine: float = 0.9999,
) -> ConversionReport:
    """Convert ``module`` (put in eval mode) to a float32 ``.tflite`` and check it.

    ``sample_inputs``: one tensor/array or a tuple, one per ``forward`` argument; their
    shapes become the model's (fixed) shapes. ``input_names``/``output_names`` name the
    TFLite signature (``input``/``output`` by default).
    """
    torch = import_torch("Converting a PyTorch model to TFLite")
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(module).__name__}")
    args = _tensors(torch, sample_inputs)
    in_names = _names(input_names, len(args), "input")
    started = time.perf_counter()
    module.eval()
    try:
        with torch.no_grad():
            wants = _outputs(torch, module(*args))
    except ConversionError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        shapes = [list(a.shape) for a in args]
        raise InputError(
            f"{type(module).__name__} fails on the sample inputs of shapes {shapes}: {first}"
        ) from exc
    out_names = _names(output_names, len(wants), "output")
    litert_torch = _import_litert_torch()
    wrapped = _named(torch, module, in_names, out_names)
    try:
        with _quiet():
            edge = litert_torch.convert(
                wrapped, sample_kwargs=dict(zip(in_names, args, strict=True))
            )
            flat = bytes(edge.model_content())
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionError(
            f"litert-torch could not convert {type(module).__name__}: {first[:300]}"
        ) from exc
    dest = Path(out_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest, suffix=".tmp") as tmp_file:
        Path(tmp_file).write_bytes(flat)
    feeds = {n: _lowered(a.cpu().numpy()) for n, a in zip(in_names, args, strict=True)}
    try:
        got = run_tflite(dest, feeds, signature=True)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionError(f"{dest}: LiteRT cannot run the converted model: {first}") from exc
    want = {n: w.detach().cpu().numpy() for n, w in zip(out_names, wants, strict=True)}
    parity = check_parity(
        want, [got[n] for n in out_names], where=str(dest), atol=atol, min_cosine=min_cosine
    )
    notes = []
    if any(a.dtype in (torch.int64, torch.float64) for a in (*args, *wants)):
        notes.append("64-bit inputs/outputs are 32-bit in LiteRT (int64 -> int32)")
    notes.append(f"converted in {time.perf_counter() - started:.2f} s")
    layout = "NCHW" if any(a.dim() == 4 for a in args) else ""
    return ConversionReport(
        dest,
        0,
        tuple(in_names),
        tuple(out_names),
        parity.max_abs_error,
        parity.cosine,
        layout,
        "tflite",
        tuple(notes),
    )
