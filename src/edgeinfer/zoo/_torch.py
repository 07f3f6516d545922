"""torch helpers for the example models: import with an install hint, seeding, thread limits,
and ONNX export that onnxruntime (and its quantization and transformer-optimizer tools) reads.

The export uses torch's TorchScript-based exporter (``dynamo=False``) where the installed
torch still has it: it is fast (well under a second for the small models here), names nodes
after the module path (``/conv1/Conv``: readable cut points for split computing), and writes
the operator patterns that ``onnxruntime.transformers`` fuses. Where it is gone, the
``torch.export``-based exporter is used instead. Either way the IR version is capped so the
installed onnxruntime can load the file, and the result is checked against torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.zoo._common import ZooError, require, save_onnx

__all__ = ["export", "import_torch", "seeded", "threads"]

OPSET = 17


def import_torch(purpose: str) -> Any:
    """``torch``, or :class:`MissingDependencyError` with the install hint."""
    return require("torch", "torch", "torch", purpose)


@contextlib.contextmanager
def threads(n: int = 1) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads and restore the old setting afterwards.

    One thread is the default on purpose: the example networks are so small that a
    parallel region costs more than it saves, and on a shared machine a second OpenMP
    thread that waits for a busy core slows training down several times.
    """
    torch = import_torch("Training an example model")
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seeded(seed: int) -> Any:
    """Seed torch's global generator and return a ``torch.Generator`` for data shuffling."""
    torch = import_torch("Training an example model")
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int = OPSET,
    check_atol: float = 1e-4,
) -> Path:
    """Export ``module`` (in eval mode) to ``path`` and check ONNX Runtime agrees with torch.

    ``dynamic_axes`` maps input/output names to ``{axis: symbol}``. Raises :class:`ZooError`
    when the exported model's outputs differ from torch's by more than ``check_atol``.
    """
    torch = import_torch("Exporting an example model to ONNX")
    onnx = require("onnx", "onnx", "torch", "Exporting an example model to ONNX")
    module.eval()
    with tempfile.TemporaryDirectory(prefix="edgeinfer-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The exporters announce their own deprecations and tracing caveats.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    args,
                    os.fspath(raw),
                    dynamo=False,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                    opset_version=opset,
                    do_constant_folding=True,
                )
            except (TypeError, ValueError, RuntimeError, NotImplementedError):
                _export_dynamo(
                    torch, module, args, raw, input_names, output_names, dynamic_axes, opset
                )
        model = onnx.load(os.fspath(raw), load_external_data=True)
    save_onnx(model, path)
    _check(module, args, path, input_names, output_names, check_atol)
    return path


def _export_dynamo(
    torch: Any,
    module: Any,
    args: tuple[Any, ...],
    raw: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int,
) -> None:
    dims: dict[str, Any] = {}
    shapes = []
    for name in input_names:
        axes = dynamic_axes.get(name, {})
        shapes.append({a: dims.setdefault(s, torch.export.Dim(s)) for a, s in axes.items()})
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_shapes=tuple(shapes),
        opset_version=opset,
        external_data=False,
    )
    program.save(os.fspath(raw))


def _check(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    atol: float,
) -> None:
    import onnxruntime as ort

    torch = import_torch("Exporting an example model to ONNX")
    with torch.no_grad():
        want = module(*args)
    wants = [want] if isinstance(want, torch.Tensor) else list(want)
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(input_names, args, strict=True)}
    got = session.run(list(output_names), feeds)
    for name, g, w in zip(output_names, got, wants, strict=True):
        w_np = w.detach().cpu().numpy()
        err = float(np.max(np.abs(g - w_np))) if g.size else 0.0
        if g.shape != w_np.shape or not err <= atol:
            raise ZooError(
                f"{path}: ONNX output {name!r} differs from torch (shape {g.shape} vs "
                f"{w_np.shape}, max abs error {err:.3g} > {atol:g}); the export is not faithful"
            )
