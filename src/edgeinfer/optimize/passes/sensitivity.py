"""Keep the nodes that quantization hurts most in float.

Quantization error is not spread evenly: a few layers (often the embeddings, the last
layers, or an attention output projection) cause most of the loss. This pass

1. quantizes the model with the given dynamic or static INT8 config,
2. runs the FP32 and the quantized model side by side on a few real samples, reading the
   intermediate activations of both (the graph outputs are extended with them, as ONNX
   Runtime's ``qdq_loss_debug`` helpers do),
3. scores every quantized node by the relative error it *adds*: the relative L2 error of
   its output minus the largest error already present in its inputs, so a node is not
   blamed for what happened upstream,
4. quantizes again with the ``exclude`` worst nodes in ``nodes_to_exclude``.

The ranking is reported in ``PassResult.info["ranking"]``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert.onnx_io import load_onnx
from edgeinfer.errors import InputError
from edgeinfer.optimize.data import Dataset, DataSource, load_dataset, model_specs
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.passes import dynamic_int8, static_int8
from edgeinfer.optimize.passes.base import DATA, PassResult, run_tool
from edgeinfer.optimize.passes.dynamic_int8 import DynamicInt8Config
from edgeinfer.optimize.passes.static_int8 import StaticInt8Config

__all__ = ["NAME", "QUANTIZABLE", "NodeError", "SensitivityConfig", "rank_nodes", "run"]

NAME = "sensitivity"
QUANTIZABLE = frozenset(
    {
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "Attention",
        "EmbedLayerNormalization",
        "Gather",
        "LSTM",
    }
)
_FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})


@dataclass(frozen=True)
class SensitivityConfig:
    """Which quantization to apply, on what data to judge it, how many nodes to spare."""

    quantization: DynamicInt8Config | StaticInt8Config = field(
        default_factory=lambda: DynamicInt8Config(per_channel=True)
    )
    data: DataSource = field(default=None, metadata=DATA, compare=False, repr=False)
    exclude: int = 3  # the most sensitive nodes kept in float
    max_samples: int = 16  # samples compared (activations of every quantized node)
    batch_size: int = 4  # samples per run (bounds memory for large activations)

    def __post_init__(self) -> None:
        if not isinstance(self.quantization, (DynamicInt8Config, StaticInt8Config)):
            raise InputError(
                "sensitivity quantization must be a DynamicInt8Config or StaticInt8Config, "
                f"got {type(self.quantization).__name__}"
            )
        if self.exclude < 1:
            raise InputError(f"exclude must be >= 1 node, got {self.exclude}")
        if self.max_samples < 1 or self.batch_size < 1:
            raise InputError("max_samples and batch_size must be >= 1")


@dataclass(frozen=True)
class NodeError:
    """How much quantization error one node adds."""

    node: str
    op_type: str
    output_error: float  # relative L2 error of the node's output, quantized vs FP32
    added_error: float  # output error minus the largest error of its inputs


def _quantize(
    model: Path, config: DynamicInt8Config | StaticInt8Config, out: Path, ranges: Path
) -> str:
    """Quantize ``model`` to ``out``; returns why per-channel weights were left, or ""."""
    if isinstance(config, StaticInt8Config):
        if not ranges.is_file():  # calibrate once, quantize twice
            static_int8.calibrate(model, config, ranges)
        return static_int8.quantize_or_retry(model, config, ranges, out)[1]
    dynamic_int8.run(model, config, out)
    return ""


def _quantized_nodes(fp32: Any, quant: Any) -> list[Any]:
    """FP32 nodes that the quantizer replaced (dynamic) or fed through DequantizeLinear (QDQ)."""
    q_nodes = {n.name: n for n in quant.graph.node}
    dq_outputs = {o for n in quant.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    found = []
    for node in fp32.graph.node:
        if node.op_type not in QUANTIZABLE or not node.name:
            continue
        twin = q_nodes.get(node.name)
        if twin is None or twin.op_type != node.op_type or any(i in dq_outputs for i in twin.input):
            found.append(node)
    return found


def _with_outputs(model: Any, names: Iterable[str]) -> bytes:
    import onnx

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    data: bytes = model.SerializeToString()
    return data


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Keep every named tensor as the graph wrote it: no fusion may remove an observed one.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def rank_nodes(model: Path, quantized: Path, data: Dataset, batch_size: int = 4) -> list[NodeError]:
    """Score the quantized nodes of ``quantized`` against FP32 ``model`` (worst first)."""
    fp32, quant = load_onnx(model), load_onnx(quantized)
    nodes = _quantized_nodes(fp32, quant)
    if not nodes:
        return []
    inits = {i.name for i in fp32.graph.initializer} | {i.name for i in quant.graph.initializer}
    consts = {o for n in fp32.graph.node if n.op_type == "Constant" for o in n.output}
    graph_inputs = {i.name for i in fp32.graph.input}
    q_tensors = {o for n in quant.graph.node for o in n.output}
    fp_tensors = {o for n in fp32.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    watched: dict[str, list[str]] = {}
    for node in nodes:
        out = node.output[0]
        # QDQ quantization folds a Relu/Clip after a quantized node into its output range and
        # keeps the activation's output name: compare there.
        while out not in q_tensors and len(consumers.get(out, ())) == 1:
            (nxt,) = consumers[out]
            if nxt.op_type not in _FOLDED_ACTIVATIONS:
                break
            out = nxt.output[0]
        if out not in q_tensors:
            continue
        ins = [
            i
            for i in node.input
            if i
            and i not in inits
            and i not in consts
            and i not in graph_inputs
            and i in fp_tensors
            and i in q_tensors
        ]
        watched[node.name] = [out, *ins]
    tensors = sorted({t for ts in watched.values() for t in ts})
    if not tensors:
        return []
    s_fp = run_tool("sensitivity analysis (FP32 model)", _session, _with_outputs(fp32, tensors))
    s_q = run_tool(
        "sensitivity analysis (quantized model)", _session, _with_outputs(quant, tensors)
    )
    del fp32, quant
    err_sq = dict.fromkeys(tensors, 0.0)
    ref_sq = dict.fromkeys(tensors, 0.0)
    for feeds in data.batches(batch_size):
        ref = dict(zip(tensors, s_fp.run(tensors, feeds), strict=True))
        got = dict(zip(tensors, s_q.run(tensors, feeds), strict=True))
        for t in tensors:
            r = ref[t].astype(np.float64, copy=False)
            g = got[t].astype(np.float64, copy=False)
            if r.shape != g.shape:
                continue
            err_sq[t] += float(np.sum((g - r) ** 2))
            ref_sq[t] += float(np.sum(r**2))
    rel = {t: float(np.sqrt(err_sq[t] / ref_sq[t])) if ref_sq[t] > 0 else 0.0 for t in tensors}
    by_name = {n.name: n for n in nodes}
    ranking = []
    for name, (out, *ins) in watched.items():
        upstream = max((rel[i] for i in ins), default=0.0)
        ranking.append(NodeError(name, by_name[name].op_type, rel[out], rel[out] - upstream))
    ranking.sort(key=lambda e: e.added_error, reverse=True)
    return ranking


def _with_excluded(
    config: DynamicInt8Config | StaticInt8Config, names: Sequence[str]
) -> DynamicInt8Config | StaticInt8Config:
    merged = tuple(dict.fromkeys((*config.nodes_to_exclude, *names)))
    return replace(config, nodes_to_exclude=merged)


def run(model: Path, config: SensitivityConfig, out_path: Path) -> PassResult:
    """Quantize, rank nodes by added error, re-quantize sparing the worst; write ``out_path``."""
    model, out_path = Path(model), Path(out_path)
    if config.data is None:
        raise InputError("the sensitivity pass needs sample inputs (data=...)")
    data = load_dataset(config.data, model_specs(model), what="sensitivity data")
    data = data.head(config.max_samples)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-sens-", dir=out_path.parent) as tmp:
        source, quant = model, config.quantization
        if isinstance(quant, StaticInt8Config):
            source, quant, _ = static_int8.prepared(model, quant, Path(tmp))
        first, ranges = Path(tmp) / "quantized.onnx", Path(tmp) / "ranges.json"
        _quantize(source, quant, first, ranges)
        ranking = rank_nodes(source, first, data, config.batch_size)
        if not ranking:
            # e.g. a tree ensemble whose only quantized operators are element-wise Add/Mul
            raise NotApplicable(
                "the quantizer changed no node this pass ranks ("
                + ", ".join(sorted(QUANTIZABLE))
                + "); nothing to keep in float"
            )
        excluded = [e.node for e in ranking[: config.exclude]]
        retried = _quantize(source, _with_excluded(quant, excluded), out_path, ranges)
    if isinstance(quant, StaticInt8Config):
        static_int8.check_loads(out_path, "static INT8 quantization")
    info = {
        "excluded": excluded,
        "ranking": [
            {
                "node": e.node,
                "op_type": e.op_type,
                "output_error": round(e.output_error, 6),
                "added_error": round(e.added_error, 6),
            }
            for e in ranking[:10]
        ],
        "samples": len(data),
    }
    if retried:
        info["per_channel"] = f"off: {retried}"
        info["note"] = "per-tensor weights: ONNX Runtime's per-channel quantizer failed here"
    return PassResult(out_path, info)
