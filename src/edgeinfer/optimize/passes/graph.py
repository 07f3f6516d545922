"""Graph optimization: transformer fusions, ONNX Runtime offline optimization, shape inference.

The usual first step of every recipe, and the quantization pre-processing ONNX Runtime
recommends:

0. Models from other exporters are brought to one default-domain opset entry and opset 13
   or newer (:mod:`.prepare`), as per-channel QDQ needs.
1. For BERT-like models, ``onnxruntime.transformers.optimizer`` fuses attention, layer
   normalization, GELU and embedding subgraphs into single ONNX Runtime operators
   (``Attention``, ``SkipLayerNormalization``, ...). Fused models run only on ONNX Runtime.
   ``transformer="auto"`` tries the fusion when the graph looks like a transformer encoder
   and keeps it only if something was fused.
2. ONNX Runtime's offline graph optimization (constant folding, redundant node elimination,
   Conv+BatchNorm folding at ``basic``; ONNX Runtime-specific fusions at ``extended``).
3. Shape inference (symbolic first, as transformer graphs need, then ONNX's), so the
   quantizers know every tensor's type and shape.

``onnxruntime.quantization.shape_inference.quant_pre_process`` does steps 2 (basic) and 3.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeinfer.convert.onnx_io import cap_ir_version, load_onnx, save_onnx
from edgeinfer.optimize.errors import OptimizeError
from edgeinfer.optimize.passes.base import PassResult, quiet, require_choice, run_tool
from edgeinfer.optimize.passes.prepare import QDQ_OPSET, prepare

__all__ = ["NAME", "GraphConfig", "detect_attention_shape", "looks_like_transformer", "run"]

NAME = "graph"
log = logging.getLogger(__name__)

Level = Literal["none", "basic", "extended"]
Transformer = Literal["auto", "bert", "off"]


@dataclass(frozen=True)
class GraphConfig:
    """Settings of the graph optimization pass."""

    level: Level = "basic"  # ONNX Runtime offline optimization level ("none": skip)
    transformer: Transformer = "auto"  # BERT-style fusions: try when it looks like one
    num_heads: int = 0  # attention heads (0: detect from the graph)
    hidden_size: int = 0  # hidden size (0: detect from the graph)
    shape_inference: bool = True  # symbolic + ONNX shape inference after optimizing
    min_opset: int = QDQ_OPSET  # older default-domain opsets are converted up (0: never)

    def __post_init__(self) -> None:
        require_choice("graph level", self.level, ("none", "basic", "extended"))
        require_choice("graph transformer", self.transformer, ("auto", "bert", "off"))
        if self.num_heads < 0 or self.hidden_size < 0:
            raise OptimizeError("num_heads and hidden_size must be >= 0 (0: detect)")
        if self.min_opset < 0:
            raise OptimizeError(
                f"min_opset must be >= 0 (0: keep the model's), got {self.min_opset}"
            )


def looks_like_transformer(model: Any) -> bool:
    """Softmax, layer normalization and many MatMuls: a transformer encoder."""
    ops = Counter(n.op_type for n in model.graph.node)
    has_norm = ops["LayerNormalization"] > 0 or (ops["ReduceMean"] > 0 and ops["Sqrt"] > 0)
    return ops["Softmax"] > 0 and has_norm and ops["MatMul"] >= 4


def _constants(model: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    found = {
        i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.dims in ([], [1])
    }
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and len(attr.t.dims) <= 1:
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def detect_attention_shape(model: Any) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` of a BERT-like graph, or ``(0, 0)`` if not found.

    The hidden size is the length of the first layer normalization's scale; the head size
    is the last entry of the 4-D reshapes that split the hidden state into heads
    (``[batch, sequence, heads, head_size]``, written as constants or as a Concat of them).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    hidden = 0
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "SkipLayerNormalization"):
            scale = inits.get(
                node.input[1] if node.op_type == "LayerNormalization" else node.input[2]
            )
            if scale is not None and len(scale.dims) == 1:
                hidden = int(scale.dims[0])
                break
    if not hidden:
        return 0, 0
    consts = _constants(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    votes: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape_name = node.input[1]
        entries: list[int | None]
        if shape_name in inits:
            entries = [int(v) for v in numpy_helper.to_array(inits[shape_name]).ravel()]
        elif shape_name in consts:
            entries = [int(v) for v in consts[shape_name].ravel()]
        elif shape_name in producer and producer[shape_name].op_type == "Concat":
            entries = []
            for part in producer[shape_name].input:
                value = consts.get(part)
                entries.append(
                    int(value.ravel()[0]) if value is not None and value.size == 1 else None
                )
        else:
            continue
        if len(entries) != 4:
            continue
        heads, size = entries[2], entries[3]
        if heads and size and heads > 0 and size > 0 and heads * size == hidden:
            votes[heads] += 1
        elif heads == -1 and size and size > 0 and hidden % size == 0:
            votes[hidden // size] += 1
    if not votes:
        return 0, hidden
    return votes.most_common(1)[0][0], hidden


def _fuse(src: Path, dst: Path, config: GraphConfig) -> dict[str, int]:
    from onnxruntime.transformers import optimizer

    heads, hidden = config.num_heads, config.hidden_size
    if not heads or not hidden:
        found_heads, found_hidden = detect_attention_shape(load_onnx(src))
        heads, hidden = heads or found_heads, hidden or found_hidden
    # optimize_model leaves a TemporaryDirectory in a reference cycle: collected later, it
    # warns (ResourceWarning) in whatever code runs then. Collect it here, warning ignored.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        fused = run_tool(
            "transformer fusion",
            optimizer.optimize_model,
            os.fspath(src),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=1,  # ORT basic optimization first: constant folding enables the fusions
        )
        gc.collect()
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    if stats:
        save_onnx(fused.model, dst)
    return stats


def _ort_optimize(src: Path, dst: Path, level: Level) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if level == "extended"
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    opts.optimized_model_filepath = os.fspath(dst)
    opts.log_severity_level = 3
    run_tool(
        "ONNX Runtime offline optimization",
        ort.InferenceSession,
        os.fspath(src),
        opts,
        providers=["CPUExecutionProvider"],
    )


@contextlib.contextmanager
def _scratch_cwd(parent: Path) -> Iterator[None]:
    """Run in a fresh temporary directory under ``parent``; remove it afterwards."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgeinfer-scratch-", dir=parent) as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(previous)


def _preprocess(src: Path, dst: Path, *, optimize: bool) -> str:
    """quant_pre_process with symbolic shape inference, falling back to ONNX's alone."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Resolved before the working directory changes: a relative path would point elsewhere.
    src, dst = src.resolve(), dst.resolve()
    for symbolic in (True, False):
        try:
            # ONNX Runtime's symbolic shape inference writes scratch files (a temporary
            # model and its external data) into the current directory: keep them in ours.
            with quiet(), _scratch_cwd(dst.parent):
                quant_pre_process(
                    os.fspath(src),
                    os.fspath(dst),
                    skip_optimization=not optimize,
                    skip_symbolic_shape=not symbolic,
                )
            return "symbolic+onnx" if symbolic else "onnx"
        except Exception as exc:  # symbolic inference gives up on some graphs
            log.info("shape inference (symbolic=%s) failed: %s", symbolic, exc)
    if optimize:
        _ort_optimize(src, dst, "basic")
        return "none"
    raise OptimizeError(f"{src}: shape inference failed (symbolic and ONNX)")


def run(model: Path, config: GraphConfig, out_path: Path) -> PassResult:
    """Fuse (transformers), optimize offline and infer shapes; write ``out_path``."""
    model, out_path = Path(model), Path(out_path)
    info: dict[str, Any] = {}
    proto = load_onnx(model)
    before = len(proto.graph.node)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-graph-", dir=out_path.parent) as tmp:
        current = model
        proto, prepared = prepare(proto, config.min_opset)
        if prepared:
            info.update(prepared)
            current = Path(tmp) / "prepared.onnx"
            save_onnx(proto, current)
        want_fusion = config.transformer == "bert" or (
            config.transformer == "auto" and looks_like_transformer(proto)
        )
        del proto
        if want_fusion:
            fused = Path(tmp) / "fused.onnx"
            try:
                stats = _fuse(current, fused, config)
            except OptimizeError:
                if config.transformer == "bert":
                    raise
                stats = {}
            info["fused"] = stats
            if stats:
                current = fused
                info["runs_on"] = "onnxruntime only (fused com.microsoft operators)"
        if config.level == "extended":
            optimized = Path(tmp) / "extended.onnx"
            _ort_optimize(current, optimized, "extended")
            current = optimized
        if config.shape_inference:
            staged = Path(tmp) / "pre.onnx"
            info["shape_inference"] = _preprocess(current, staged, optimize=config.level == "basic")
            current = staged
        elif config.level == "basic":
            staged = Path(tmp) / "basic.onnx"
            _ort_optimize(current, staged, "basic")
            current = staged
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if current == model:
            save_onnx(load_onnx(model), out_path)
        else:
            os.replace(current, out_path)
    cap_ir_version(out_path)
    after = len(load_onnx(out_path).graph.node)
    info.update(level=config.level, nodes_before=before, nodes_after=after)
    return PassResult(out_path, info)
