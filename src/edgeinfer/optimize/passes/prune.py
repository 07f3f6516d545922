"""Pruning: unstructured magnitude pruning of ONNX weights, structured channel pruning of
PyTorch models before export.

**Magnitude pruning** (``run``) sets the smallest-magnitude fraction of each large weight
tensor of MatMul/Gemm/Conv nodes to zero and reports the sparsity reached and the file's
compressed size. Plainly: ONNX Runtime's CPU kernels do not skip zeros, so unstructured
sparsity makes a model neither faster nor smaller on disk; it only compresses better
(for download) and prepares for runtimes with sparse kernels.

**Channel pruning** (:func:`prune_channels`) removes whole output channels of ``Conv2d`` and
``Linear`` layers (lowest L1 norm first) from a PyTorch module and the matching inputs of
the layer that consumes them, so the exported model really is smaller and faster. It
follows chains such as conv -> batchnorm -> relu -> pool -> conv and conv -> flatten ->
linear (found with ``torch.fx``); layers whose output feeds more than one place (residual
connections) and the last layer are left alone. Accuracy drops: fine-tune afterwards, e.g.
with the distillation pass using the unpruned model as the teacher.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert.onnx_io import load_onnx, save_onnx
from edgeinfer.errors import InputError
from edgeinfer.optimize.passes.base import PassResult

__all__ = ["NAME", "NO_SPEEDUP_NOTE", "PruneConfig", "compressed_size", "prune_channels", "run"]

NAME = "prune"
NO_SPEEDUP_NOTE = (
    "unstructured sparsity: ONNX Runtime's CPU kernels do not skip zeros, so the model is "
    "not faster and its file is not smaller; only its compressed size shrinks"
)


@dataclass(frozen=True)
class PruneConfig:
    """Settings of magnitude pruning."""

    sparsity: float = 0.5  # fraction of each pruned tensor set to zero
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")  # whose weights are pruned
    min_size: int = 256  # tensors with fewer elements (biases, tiny layers) are left alone

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise InputError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.min_size < 1:
            raise InputError(f"min_size must be >= 1, got {self.min_size}")
        object.__setattr__(self, "op_types", tuple(self.op_types))


def compressed_size(path: Path, level: int = 6) -> int:
    """Bytes of the file after zlib compression (what a download would carry)."""
    return len(zlib.compress(Path(path).read_bytes(), level))


def run(model: Path, config: PruneConfig, out_path: Path) -> PassResult:
    """Zero the smallest weights of each large MatMul/Gemm/Conv weight; write ``out_path``."""
    from onnx import numpy_helper

    model, out_path = Path(model), Path(out_path)
    proto = load_onnx(model)
    weight_names = {
        node.input[1]
        for node in proto.graph.node
        if node.op_type in config.op_types and len(node.input) > 1
    }
    pruned = zeros = total = 0
    for i, init in enumerate(proto.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f":
            total += arr.size
        if (
            init.name not in weight_names
            or arr.dtype.kind != "f"
            or arr.ndim < 2
            or arr.size < config.min_size
        ):
            zeros += int(np.count_nonzero(arr == 0)) if arr.dtype.kind == "f" else 0
            continue
        k = round(config.sparsity * arr.size)
        if k > 0:
            flat = np.abs(arr).ravel()
            threshold = np.partition(flat, k - 1)[k - 1]
            arr = np.where(np.abs(arr) <= threshold, 0, arr).astype(arr.dtype)
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
        pruned += arr.size
        zeros += int(np.count_nonzero(arr == 0))
    if pruned == 0:
        raise InputError(
            f"{model}: no weight tensor of {', '.join(config.op_types)} nodes has "
            f">= {config.min_size} elements; nothing to prune"
        )
    save_onnx(proto, out_path)
    info = {
        "target_sparsity": config.sparsity,
        "weight_sparsity": round(zeros / max(total, 1), 4),
        "pruned_elements": pruned,
        "size_bytes": out_path.stat().st_size,
        "compressed_bytes": compressed_size(out_path),
        "compressed_bytes_before": compressed_size(model),
        "note": NO_SPEEDUP_NOTE,
    }
    return PassResult(out_path, info)


# ---------------------------------------------------------------- structured (PyTorch)
_PASSTHROUGH_MODULES = (
    "ReLU",
    "ReLU6",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "LeakyReLU",
    "ELU",
    "Hardswish",
    "Dropout",
    "Dropout2d",
    "Identity",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm2d",
    "BatchNorm1d",
)
_PASSTHROUGH_FUNCTIONS = ("relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "dropout")


def _chain(gm: Any, node: Any) -> tuple[list[Any], Any, int] | None:
    """From a Conv2d/Linear node, the BatchNorms on the way, the consumer and the flatten
    factor (features per channel after a flatten), or ``None`` if not prunable."""
    import torch

    norms: list[Any] = []
    factor = 1
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None
        nxt = users[0]
        if nxt.op == "call_module":
            sub = gm.get_submodule(nxt.target)
            kind = type(sub).__name__
            if isinstance(sub, (torch.nn.Conv2d, torch.nn.Linear)):
                if isinstance(sub, torch.nn.Conv2d) and (sub.groups != 1 or factor != 1):
                    return None
                return norms, sub, factor
            if kind == "Flatten":
                shape = current.meta.get("tensor_meta")
                if shape is None or len(shape.shape) < 2:
                    return None
                factor = int(np.prod(shape.shape[2:])) if len(shape.shape) > 2 else 1
            elif kind in _PASSTHROUGH_MODULES:
                if kind.startswith("BatchNorm"):
                    norms.append(sub)
            else:
                return None
        elif nxt.op in ("call_function", "call_method"):
            name = getattr(nxt.target, "__name__", str(nxt.target))
            if name in ("flatten",):
                shape = current.meta.get("tensor_meta")
                if shape is None:
                    return None
                factor = int(np.prod(shape.shape[2:])) if len(shape.shape) > 2 else 1
            elif name not in _PASSTHROUGH_FUNCTIONS:
                return None
        else:
            return None
        current = nxt


def prune_channels(module: Any, amount: float, example_inputs: Any) -> Any:
    """A copy of ``module`` with ``amount`` (0..1) of the output channels of each prunable
    Conv2d/Linear removed (lowest L1 norm), consumers and BatchNorms adjusted."""
    import torch
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    if not 0.0 < amount < 1.0:
        raise InputError(f"amount must be in (0, 1), got {amount}")
    pruned = copy.deepcopy(module).eval()
    try:
        gm = symbolic_trace(pruned)
    except Exception as exc:
        raise InputError(
            f"{type(module).__name__} cannot be traced with torch.fx for channel pruning: {exc}"
        ) from exc
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)
    plans = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        layer = gm.get_submodule(node.target)
        if not isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        if isinstance(layer, torch.nn.Conv2d) and layer.groups != 1:
            continue
        found = _chain(gm, node)
        if found is not None:
            plans.append((layer, *found))
    if not plans:
        raise InputError(f"{type(module).__name__}: no Conv2d/Linear chain can be pruned")
    with torch.no_grad():
        for layer, norms, consumer, factor in plans:
            w = layer.weight
            n_out = w.shape[0]
            keep_n = max(1, round(n_out * (1.0 - amount)))
            score = w.abs().reshape(n_out, -1).sum(dim=1)
            keep = torch.sort(torch.topk(score, keep_n).indices).values
            layer.weight = torch.nn.Parameter(w[keep].clone())
            if layer.bias is not None:
                layer.bias = torch.nn.Parameter(layer.bias[keep].clone())
            if isinstance(layer, torch.nn.Conv2d):
                layer.out_channels = keep_n
            else:
                layer.out_features = keep_n
            for bn in norms:
                bn.weight = torch.nn.Parameter(bn.weight[keep].clone())
                bn.bias = torch.nn.Parameter(bn.bias[keep].clone())
                bn.running_mean = bn.running_mean[keep].clone()
                bn.running_var = bn.running_var[keep].clone()
                bn.num_features = keep_n
            cols = keep
            if factor > 1:
                cols = (keep[:, None] * factor + torch.arange(factor)[None, :]).reshape(-1)
            consumer.weight = torch.nn.Parameter(consumer.weight[:, cols].clone())
            if isinstance(consumer, torch.nn.Conv2d):
                consumer.in_channels = keep_n
            else:
                consumer.in_features = len(cols)
    return pruned
