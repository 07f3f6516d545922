"""Head and tail models of a cut, as standalone ONNX files.

The head maps the model inputs to the tensors crossing the cut; the tail maps those
tensors to the model outputs. Each side keeps only the nodes it needs (walking back from
its outputs) and the initializers those nodes read, with the original opset imports, IR
version and local functions, so whatever runtime loads the full model loads both halves.
Running the head and feeding its outputs to the tail gives the full model's outputs.

>>> head, tail = extract("digits.onnx", 3, "out/cut-3")                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from edgeinfer._atomic import replacing
from edgeinfer.errors import InputError
from edgeinfer.split._sort import node_inputs
from edgeinfer.split.graph import (
    DEFAULT_MAX_TENSORS,
    Cut,
    CutTensor,
    GraphIndex,
    cuts_of,
    load_model,
)
from edgeinfer.tensors import DTYPES

if TYPE_CHECKING:
    import onnx

__all__ = ["HEAD_FILE", "TAIL_FILE", "SplitFiles", "extract", "resolve_cut", "split_model"]

HEAD_FILE = "head.onnx"
TAIL_FILE = "tail.onnx"
_EXTERNAL_ABOVE = 1_800_000_000  # bytes: beyond this, weights go to a side file (protobuf's 2 GB)


class SplitFiles(NamedTuple):
    """Where :func:`extract` wrote the two halves."""

    head: Path
    tail: Path


def _walk(graph: GraphIndex, targets: list[str], stops: set[str]) -> tuple[list[int], set[str]]:
    """Nodes needed to compute ``targets`` from ``stops`` (in order) and the leaves reached
    that are neither stops nor initializers (empty when the cut really separates)."""
    needed: set[int] = set()
    missing: set[str] = set()
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in stops or t in graph.initializers:
            continue
        k = graph.producer.get(t)
        if k is None:
            missing.add(t)
            continue
        if k not in needed:
            needed.add(k)
            stack.extend(node_inputs(graph.nodes[k]))
    return sorted(needed), missing


def _value_info(t: CutTensor) -> onnx.ValueInfoProto:
    from onnx import helper

    return helper.make_tensor_value_info(t.name, DTYPES[t.dtype].onnx, t.shape)


def _make(
    graph: GraphIndex,
    nodes: list[int],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    name: str,
) -> onnx.ModelProto:
    from onnx import helper

    src = graph.model
    chosen = [graph.nodes[k] for k in nodes]
    used = {i for n in chosen for i in node_inputs(n)}
    inits = [t for t in src.graph.initializer if t.name in used]
    sparse = [t for t in src.graph.sparse_initializer if t.values.name in used]
    g = helper.make_graph(chosen, name, inputs, outputs, inits, sparse_initializer=sparse)
    model = helper.make_model(
        g,
        opset_imports=list(src.opset_import),
        ir_version=src.ir_version,
        producer_name="edgeinfer.split",
        functions=list(src.functions),
    )
    for prop in src.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def split_model(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The head and tail of ``model`` (weights loaded) at ``cut``."""
    graph = GraphIndex(model)
    crossing = list(cut.tensors)
    known = set(graph.inputs) | set(graph.producer)
    strangers = [t for t in crossing if t not in known]
    if strangers:
        raise InputError(
            f"cut {cut.index}: tensor(s) {', '.join(map(repr, strangers))} are not in this "
            "model; was the cut listed for another model?"
        )
    inputs_by_name = {vi.name: vi for vi in model.graph.input}
    crossing_set = set(crossing)

    head_nodes, missing = _walk(
        graph, [t for t in crossing if t in graph.producer], set(graph.inputs)
    )
    reached = {i for k in head_nodes for i in node_inputs(graph.nodes[k])}
    head_inputs = [inputs_by_name[t] for t in graph.inputs if t in reached or t in crossing_set]
    head = _make(graph, head_nodes, head_inputs, [_value_info(t) for t in cut.crossing], "head")

    tail_nodes, missing = _walk(graph, graph.outputs, crossing_set)
    if missing:
        raise InputError(
            f"cut {cut.index} does not separate the model: the tail would also need "
            f"{', '.join(map(repr, sorted(missing)))}"
        )
    tail_inputs = [_value_info(t) for t in cut.crossing]
    tail = _make(graph, tail_nodes, tail_inputs, list(model.graph.output), "tail")
    return head, tail


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Write atomically; weights beyond protobuf's limit go to ``<name>.data`` beside it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if model.ByteSize() > _EXTERNAL_ABOVE:
            onnx.save(
                model, os.fspath(tmp), save_as_external_data=True, location=f"{path.name}.data",
                all_tensors_to_one_file=True,
            )  # fmt: skip
        else:
            onnx.save(model, os.fspath(tmp))
    return path


def resolve_cut(
    model: onnx.ModelProto,
    cut: Cut | int,
    *,
    dims: Mapping[str, int] | None = None,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    where: str = "model",
) -> Cut:
    """A :class:`Cut` as given, or the cut at that index of the model's cut list."""
    if isinstance(cut, Cut):
        return cut
    if isinstance(cut, bool) or not isinstance(cut, int):
        raise InputError(f"cut must be a Cut or an integer index, got {type(cut).__name__}")
    cuts = cuts_of(model, dims=dims, max_tensors=max_tensors, where=where)
    if not 0 <= cut < len(cuts):
        raise InputError(
            f"cut index {cut} is out of range: {where} has {len(cuts)} cuts "
            f"(0..{len(cuts) - 1}; 0 is remote-only, {len(cuts) - 1} local-only)"
        )
    return cuts[cut]


def extract(
    model_path: str | os.PathLike[str],
    cut: Cut | int,
    out_dir: str | os.PathLike[str],
    *,
    dims: Mapping[str, int] | None = None,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    compress: str | None = None,
) -> SplitFiles:
    """Write ``head.onnx`` and ``tail.onnx`` for ``cut`` (a :class:`Cut` or an index into
    ``cut_points(model_path, dims=dims, max_tensors=max_tensors)``) into ``out_dir``.

    ``compress``: ``"uint8"`` or ``"fp16"`` quantizes the float tensors crossing the cut
    at the end of the head and restores them at the start of the tail (see
    :mod:`edgeinfer.split.compress`); ``None`` sends them as they are.
    """
    from edgeinfer.split.compress import compress_split

    model = load_model(model_path)
    chosen = resolve_cut(model, cut, dims=dims, max_tensors=max_tensors, where=str(model_path))
    head, tail = split_model(model, chosen)
    if compress is not None:
        head, tail = compress_split(head, tail, chosen, compress)
    out = Path(out_dir)
    return SplitFiles(save_model(head, out / HEAD_FILE), save_model(tail, out / TAIL_FILE))
