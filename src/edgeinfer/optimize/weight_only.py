"""Weight-only quantization of a language model's decoder: MatMulNBits blocks.

A candidate name says everything it does::

    int4-<method>-b<block>-acc<level>-head-<head>     int8-b<block>-acc<level>-head-<head>

``method`` is how the 4-bit weights are found: ``rtn`` (ONNX Runtime's blockwise
round-to-nearest, symmetric, as onnxruntime-genai's model builder does), ``rtn-asym`` (the
same with an integer zero point per block, each block's range stretched to hold 0),
``rtn-asymf`` (asymmetric with the zero point kept as a float: llama.cpp's Q4_1 quantizer,
which gives a model dequantized from GGUF Q4_1 its own weights back exactly, where the
others re-round them onto another grid; :mod:`.int4_asymf`, ADR 0019), ``hqq``
(half-quadratic quantization, asymmetric; needs torch) or ``kquant`` (k-quant search of each
block's scale and zero point, asymmetric); ``block`` is the number of weights sharing one
scale (32, 64, 128); ``level`` is MatMulNBits' ``accuracy_level`` (0: float activations;
4: int8 activations, the fast integer kernels); ``head`` is the LM head (the last MatMul,
vocabulary-wide): ``int4`` like the rest, ``int8`` or ``fp32`` (kept float). Every other
MatMul with a constant weight is quantized; embeddings stay as they are. :func:`quantize`
writes the quantized decoder and every other file of the model directory (genai config,
tokenizer) into a new directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.errors import InputError
from edgeinfer.manifest import GOLDEN_FILE, MANIFEST_FILE
from edgeinfer.optimize.errors import NotApplicable
from edgeinfer.optimize.passes.base import quiet

__all__ = [
    "ALL_CANDIDATES",
    "BLOCKS",
    "DEFAULT_CANDIDATES",
    "METHODS",
    "WeightOnly",
    "expand",
    "method_missing",
    "parse",
    "quantize",
]

METHODS = ("rtn", "rtn-asym", "rtn-asymf", "hqq", "kquant")
BLOCKS = (32, 64, 128)
HEADS = ("int4", "int8", "fp32")
_NAME = re.compile(
    r"^(?:int4-(?P<method>rtn-asymf|rtn-asym|rtn|hqq|kquant)|(?P<int8>int8))-b(?P<block>\d+)"
    r"-acc(?P<level>\d)-head-(?P<head>int4|int8|fp32)$"
)
# RTN at each block size with the fast kernels and an INT8 head; k-quant at one block size
# (it searches each block's scale: minutes on a 135M-parameter model where RTN takes
# seconds); then one change at a time from the builder's recipe (int4-rtn-b32-acc4-head-int4),
# then all-INT8. "all" names every combination. HQQ only when named: on SmolLM2 it took
# 21 minutes to build (RTN: 30 s) and its model decoded at 1.1 s a token (RTN: 45 ms), for
# a perplexity (+18.7%) no better than the RTN candidates' best (bench_generate.py).
# rtn-asymf at block 32 is GGUF Q4_1's own recipe (exact on a model dequantized from Q4_1).
DEFAULT_CANDIDATES = (
    *(f"int4-rtn-b{b}-acc4-head-int8" for b in BLOCKS),
    "int4-rtn-asym-b32-acc4-head-int8",
    "int4-rtn-asymf-b32-acc4-head-int8",
    "int4-kquant-b32-acc4-head-int8",
    "int4-rtn-b32-acc4-head-int4",
    "int4-rtn-b32-acc4-head-fp32",
    "int4-rtn-b32-acc0-head-int8",
    "int8-b32-acc4-head-int8",
    "int8-b32-acc0-head-int8",
)
ALL_CANDIDATES = (
    *(
        f"int4-{m}-b{b}-acc{a}-head-{h}"
        for m in METHODS
        for b in BLOCKS
        for a in (4, 0)
        for h in HEADS
    ),
    *(f"int8-b{b}-acc{a}-head-{h}" for b in BLOCKS for a in (4, 0) for h in ("int8", "fp32")),
)


@dataclass(frozen=True)
class WeightOnly:
    """One candidate's settings (see the module docs); ``name`` round-trips :func:`parse`."""

    bits: int  # 4 or 8, every MatMul but the head
    method: str  # rtn | rtn-asym | rtn-asymf | hqq | kquant (8 bits: rtn)
    block_size: int
    accuracy_level: int  # 0 or 4
    head: str  # int4 | int8 | fp32

    @property
    def name(self) -> str:
        what = f"int4-{self.method}" if self.bits == 4 else "int8"
        return f"{what}-b{self.block_size}-acc{self.accuracy_level}-head-{self.head}"

    def describe(self) -> str:
        method = {
            "rtn": "RTN",
            "rtn-asym": "RTN asymmetric",
            "rtn-asymf": "RTN asymmetric, float zero point (GGUF Q4_1)",
            "hqq": "HQQ",
            "kquant": "k-quant",
        }[self.method]
        head = "float" if self.head == "fp32" else self.head.upper()
        return (
            f"weight-only INT{self.bits} ({method}, blocks of {self.block_size}, "
            f"accuracy_level {self.accuracy_level}), LM head {head}"
        )


def expand(names: tuple[str, ...] | None) -> tuple[str, ...]:
    """Candidate names as asked for: None is the default set, "all" every combination."""
    if names is None:
        return DEFAULT_CANDIDATES
    out: list[str] = []
    for name in names:
        for n in ALL_CANDIDATES if name.strip() == "all" else (name.strip(),):
            if n not in out:
                out.append(n)
    return tuple(out)


def parse(name: str) -> WeightOnly:
    """The settings a candidate name asks for; a one-line error for a name that is not one."""
    m = _NAME.match(name.strip())
    if m is None:
        raise InputError(
            f"unknown generative candidate {name!r}; expected "
            "int4-{rtn,rtn-asym,rtn-asymf,hqq,kquant}-b{32,64,128}-acc{0,4}-head-{int4,int8,fp32}"
            " or "
            "int8-b{32,64,128}-acc{0,4}-head-{int8,fp32}, e.g. int4-rtn-b32-acc4-head-int8"
        )
    block, level, head = int(m["block"]), int(m["level"]), m["head"]
    if block not in BLOCKS or level not in (0, 4) or (m["int8"] and head == "int4"):
        raise InputError(
            f"generative candidate {name!r}: block size is one of {list(BLOCKS)}, "
            "accuracy level 0 or 4, and an INT8 model's head int8 or fp32"
        )
    bits = 8 if m["int8"] else 4
    return WeightOnly(bits, m["method"] or "rtn", block, level, head)


def method_missing(method: str) -> str:
    """Why ``method`` cannot run here ("" when it can)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    need = {"hqq": "HQQWeightOnlyQuantConfig", "kquant": "KQuantWeightOnlyQuantConfig"}
    if method in need and not hasattr(mq, need[method]):
        return f"this ONNX Runtime has no {method} weight-only quantizer"
    if method == "hqq" and importlib.util.find_spec("torch") is None:
        return "HQQ needs torch (pip install 'edgeinfer[torch]')"
    return ""


def _head(model: Any, logits: str) -> str:
    """The LM head: the MatMul that produces the logits (through at most a Cast/Add)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    name, hops = logits, 0
    while name in producers and hops < 3:
        node = producers[name]
        if node.op_type == "MatMul":
            return str(node.name)
        name, hops = node.input[0], hops + 1
    raise NotApplicable(f"no MatMul produces the model's {logits!r} output (no LM head found)")


def _matmuls(model: Any) -> list[str]:
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _run(model: Any, config: Any, exclude: list[str], spec: WeightOnly, bits: int) -> Any:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    q = mq.MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=spec.block_size,
        is_symmetric=True,
        accuracy_level=spec.accuracy_level,
        nodes_to_exclude=exclude,
        algo_config=config,
    )
    with quiet():
        q.process()
    out = q.model
    return out.model if hasattr(out, "model") else out


def _quantize_proto(model: Any, spec: WeightOnly, logits: str) -> Any:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    head = _head(model, logits)
    body = [n for n in _matmuls(model) if n != head]
    if not body:
        raise NotApplicable("no MatMul with a constant weight besides the LM head")
    if spec.bits == 4 and spec.method == "kquant":
        inits = {i.name: i for i in model.graph.initializer}
        nodes = {n.name: n for n in model.graph.node}
        odd = sorted({int(inits[nodes[n].input[1]].dims[0]) for n in body} - {0})
        odd = [k for k in odd if k % spec.block_size]
        if odd:  # its search reshapes each weight into whole blocks
            raise NotApplicable(
                f"k-quant needs each weight's input size to be a multiple of the block size "
                f"{spec.block_size}; this model has {', '.join(map(str, odd))}"
            )
    if spec.bits == 4 and spec.method == "rtn-asymf":
        return _asymf(model, spec, head, body)
    if spec.bits == 8 or spec.method.startswith("rtn"):
        cfg: Any = mq.DefaultWeightOnlyQuantConfig(
            block_size=spec.block_size,
            is_symmetric=spec.method != "rtn-asym",
            accuracy_level=spec.accuracy_level,
            bits=spec.bits,
        )
    elif spec.method == "hqq":
        cfg = mq.HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=4)
    else:
        cfg = mq.KQuantWeightOnlyQuantConfig()
    same = spec.head == ("int4" if spec.bits == 4 else "int8")
    model = _run(model, cfg, [] if same else [head], spec, spec.bits)
    if spec.head == "int8" and not same:
        cfg8 = mq.DefaultWeightOnlyQuantConfig(
            block_size=spec.block_size,
            is_symmetric=True,
            accuracy_level=spec.accuracy_level,
            bits=8,
        )
        model = _run(model, cfg8, [], spec, 8)
    if spec.bits == 4 and spec.head != "fp32":
        model = _quantize_embedding(model, spec)
    return _one_level(model, spec)


def _asymf(model: Any, spec: WeightOnly, head: str, body: list[str]) -> Any:
    """``rtn-asymf``: the body (and an INT4 head) by :mod:`.int4_asymf`; an INT8 head by
    ONNX Runtime's quantizer first, which must then not see the offset MatMuls."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    from edgeinfer.optimize import int4_asymf

    if spec.head == "int8":
        cfg8 = mq.DefaultWeightOnlyQuantConfig(
            block_size=spec.block_size,
            is_symmetric=True,
            accuracy_level=spec.accuracy_level,
            bits=8,
        )
        model = _run(model, cfg8, body, spec, 8)
    targets = [*body, head] if spec.head == "int4" else body
    model, _ = int4_asymf.apply(model, targets, spec.block_size, spec.accuracy_level)
    if spec.head != "fp32":
        model = _quantize_embedding(model, spec)
    return _one_level(model, spec)


def _one_level(model: Any, spec: WeightOnly) -> Any:
    """One accuracy level everywhere (HQQ and k-quant do not set it themselves)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            keep = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(keep)
            node.attribute.append(helper.make_attribute("accuracy_level", spec.accuracy_level))
    return model


def _quantize_embedding(model: Any, spec: WeightOnly) -> Any:
    """The token embedding as INT4 blocks (GatherBlockQuantized), as the model builder's
    INT4 models have it. A tied embedding (a Gather over the transposed float LM head
    weight, which the quantized head no longer uses) gets its own float copy first."""
    import numpy as np
    from onnx import numpy_helper
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    found = False
    for node in model.graph.node:
        if node.op_type != "Gather" or not node.input or node.input[0] in ("",):
            continue
        data = node.input[0]
        tied = producers.get(data)
        if data in inits:
            found = True
        elif tied is not None and tied.op_type == "Transpose" and tied.input[0] in inits:
            weight = numpy_helper.to_array(inits[tied.input[0]])
            embed = numpy_helper.from_array(
                np.ascontiguousarray(weight.T), f"{tied.input[0]}.embedding"
            )
            model.graph.initializer.append(embed)
            node.input[0] = embed.name
            if users.get(data, 0) == 1:
                model.graph.node.remove(tied)
                if users.get(tied.input[0], 0) == 1:
                    model.graph.initializer.remove(inits[tied.input[0]])
            found = True
    if not found:
        return model
    cfg = mq.DefaultWeightOnlyQuantConfig(
        block_size=spec.block_size,
        is_symmetric=True,
        bits=4,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    return _run(model, cfg, [], spec, 4)


def quantize(src_dir: Path, out_dir: Path, spec: WeightOnly, genai: dict[str, Any]) -> Path:
    """Quantize the decoder of the genai model in ``src_dir`` into ``out_dir`` (new)."""
    import onnx

    if spec.bits == 4 and (why := method_missing(spec.method)):
        raise NotApplicable(why)
    decoder = genai["decoder"]
    filename = str(decoder["filename"])
    logits = str(decoder.get("outputs", {}).get("logits", "logits"))
    model = onnx.load(os.fspath(src_dir / filename))
    if any(n.op_type == "MatMulNBits" for n in model.graph.node):
        raise NotApplicable("the decoder is quantized already (MatMulNBits)")
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    model = _quantize_proto(model, spec, logits)
    out_dir.mkdir(parents=True)
    data = f"{filename}.data"
    skip = {filename, data, MANIFEST_FILE, GOLDEN_FILE}
    for item in sorted(src_dir.iterdir()):  # the genai config, tokenizer, chat template
        if item.is_file() and item.name not in skip:
            shutil.copy2(item, out_dir / item.name)
    onnx.save_model(
        model,
        os.fspath(out_dir / filename),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    return out_dir
