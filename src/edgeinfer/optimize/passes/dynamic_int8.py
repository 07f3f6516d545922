"""Dynamic INT8 quantization: INT8 weights, activations quantized on the fly at run time.

Wraps ``onnxruntime.quantization.quantize_dynamic``. Weights are stored as INT8 (or UINT8),
per tensor or per output channel; activations are quantized per call from their observed
range, so no calibration data is needed. It suits MatMul-heavy models (transformers,
MLPs) best. ``per_channel`` keeps far more accuracy on transformers than the per-tensor
default (all-MiniLM-L6-v2 goes from ~0.96 to ~0.99 mean cosine to FP32), and
``reduce_range`` (7-bit weights) avoids the int16 saturation of U8S8 kernels on x86 CPUs
without VNNI at some cost in precision.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeinfer.convert.onnx_io import cap_ir_version, load_onnx, save_onnx
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.passes.base import PassResult, require_choice, run_tool
from edgeinfer.optimize.passes.prepare import prepare

__all__ = ["NAME", "DynamicInt8Config", "run"]

NAME = "dynamic_int8"
# ONNX Runtime's dynamic INT8 kernels (its IntegerOpsRegistry, less Transpose, which only
# follows a quantized input)
_INTEGER_OPS = ("Attention", "Conv", "EmbedLayerNormalization", "Gather", "LSTM", "MatMul")

WeightType = Literal["int8", "uint8"]


@dataclass(frozen=True)
class DynamicInt8Config:
    """Settings of dynamic INT8 quantization."""

    weight_type: WeightType = "int8"  # storage type of quantized weights
    per_channel: bool = False  # one scale per output channel instead of per tensor
    reduce_range: bool = False  # 7-bit weights (for x86 CPUs without VNNI)
    op_types: tuple[str, ...] | None = None  # None: ONNX Runtime's default set
    nodes_to_exclude: tuple[str, ...] = ()  # node names kept in float

    def __post_init__(self) -> None:
        require_choice("weight_type", self.weight_type, ("int8", "uint8"))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))


def quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def quantized_ops(model: Any) -> dict[str, int]:
    """How many nodes of each quantized operator type a model holds."""
    names = Counter(n.op_type for n in model.graph.node)
    keep = ("Integer", "QLinear", "Quantize", "Dequantize", "QAttention", "QEmbed", "QGather")
    return {k: v for k, v in sorted(names.items()) if any(p in k for p in keep)}


def run(model: Path, config: DynamicInt8Config, out_path: Path) -> PassResult:
    """Quantize ``model``'s weights to INT8 and write ``out_path``."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    model, out_path = Path(model), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Dynamic QuantizeLinear needs no opset 13: only the exporters' quirks are fixed.
    proto, info = prepare(load_onnx(model), min_opset=0)
    have = {n.op_type for n in proto.graph.node}
    wanted = set(config.op_types or _INTEGER_OPS)
    if not have & wanted:
        ops = ", ".join(sorted(have)[:6]) + (", ..." if len(have) > 6 else "")
        raise NotApplicable(
            f"nothing to quantize: no operator here has a dynamic INT8 kernel (the model has {ops})"
        )
    with tempfile.TemporaryDirectory(prefix="edgeinfer-dynamic-", dir=out_path.parent) as tmp:
        source = model
        if info:
            source = Path(tmp) / "prepared.onnx"
            save_onnx(proto, source)
        del proto
        run_tool(
            "dynamic INT8 quantization",
            quantize_dynamic,
            os.fspath(source),
            os.fspath(out_path),
            weight_type=quant_type(config.weight_type),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            op_types_to_quantize=list(config.op_types) if config.op_types else None,
            nodes_to_exclude=list(config.nodes_to_exclude),
            # Fused ONNX Runtime operators have no ONNX type inference; their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    cap_ir_version(out_path)
    info.update(
        quantized_ops=quantized_ops(load_onnx(out_path)),
        excluded=list(config.nodes_to_exclude),
    )
    return PassResult(out_path, info)
