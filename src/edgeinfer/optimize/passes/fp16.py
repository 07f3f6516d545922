"""FP16 conversion for GPU and NPU execution providers, keeping float32 inputs and outputs.

Weights and activations become float16 (half the size; on GPUs and NPUs with FP16 units,
faster); inputs and outputs stay float32 so callers and the bundle's signature do not
change (Cast nodes sit at the edges). Uses ``onnxruntime.transformers.float16`` (installed
with ONNX Runtime). Ops with no sensible FP16 form (tree ensembles, ``Range``, ``TopK``,
...) stay in float32 by default; ``op_block_list`` adds more.

ONNX Runtime's CPU execution provider has few FP16 kernels: it runs such a model by casting
back to float32, so on a CPU-only machine FP16 is only smaller, never faster. The search
therefore tries FP16 only where a GPU/NPU provider is available.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeinfer.convert.onnx_io import load_onnx, save_onnx
from edgeinfer.optimize.passes.base import PassResult, run_tool

__all__ = ["FP16_PROVIDERS", "NAME", "Fp16Config", "run"]

NAME = "fp16"
# Execution providers with fast FP16 arithmetic.
FP16_PROVIDERS = (
    "TensorrtExecutionProvider",
    "NvTensorRTRTXExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "OpenVINOExecutionProvider",
)


@dataclass(frozen=True)
class Fp16Config:
    """Settings of the FP16 conversion."""

    keep_io_types: bool = True  # inputs/outputs stay float32 (Casts at the edges)
    op_block_list: tuple[str, ...] = ()  # extra op types kept in float32
    node_block_list: tuple[str, ...] = ()  # node names kept in float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_block_list", tuple(self.op_block_list))
        object.__setattr__(self, "node_block_list", tuple(self.node_block_list))


def run(model: Path, config: Fp16Config, out_path: Path) -> PassResult:
    """Convert float32 weights and compute to float16; write ``out_path``."""
    from onnxruntime.transformers import float16

    proto = load_onnx(model)
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(config.op_block_list)
    converted = run_tool(
        "FP16 conversion",
        float16.convert_float_to_float16,
        proto,
        keep_io_types=config.keep_io_types,
        op_block_list=block,
        node_block_list=list(config.node_block_list) or None,
    )
    save_onnx(converted, out_path)
    return PassResult(Path(out_path), {"keep_io_types": config.keep_io_types})
