"""Compaction: short internal names, no doc strings, no intermediate shape annotations.

Exporters and quantizers name every tensor after its module path
(``/encoder/layer.0/attention/output/dense/MatMul_output_0_QuantizeLinear_Output``); in a
model of a few ten thousand INT8 weights those names weigh as much as a tenth of the file.
This pass renames nodes and intermediate tensors to short ids, drops doc strings and
``value_info``, and leaves the model's inputs, outputs and arithmetic untouched. Models with
control-flow subgraphs (``If``, ``Loop``, ``Scan``) are passed through unchanged, since their
bodies may refer to outer names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeinfer.convert.onnx_io import load_onnx, save_onnx
from edgeinfer.optimize.passes.base import PassResult

__all__ = ["NAME", "CompactConfig", "run"]

NAME = "compact"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class CompactConfig:
    """Settings of the compaction pass."""

    rename: bool = True  # short ids for nodes and intermediate tensors
    strip_docs: bool = True  # drop doc strings
    strip_value_info: bool = True  # drop shape annotations of intermediate tensors


def _b36(i: int) -> str:
    out = ""
    while True:
        i, r = divmod(i, 36)
        out = _DIGITS[r] + out
        if i == 0:
            return out


def run(model: Path, config: CompactConfig, out_path: Path) -> PassResult:
    """Rename, strip and write ``out_path``; the arithmetic is unchanged."""
    proto = load_onnx(model)
    before = Path(model).stat().st_size
    graph = proto.graph
    has_subgraphs = any(a.g.node or a.graphs for n in graph.node for a in n.attribute)
    renamed = 0
    if config.rename and not has_subgraphs:
        keep = {v.name for v in graph.input} | {v.name for v in graph.output}
        names: dict[str, str] = {}

        def short(name: str) -> str:
            if not name or name in keep:
                return name
            if name not in names:
                names[name] = "t" + _b36(len(names))
            return names[name]

        for init in graph.initializer:
            init.name = short(init.name)
        for init in graph.sparse_initializer:
            init.values.name = short(init.values.name)
        for i, node in enumerate(graph.node):
            node.name = "n" + _b36(i)
            node.input[:] = [short(x) for x in node.input]
            node.output[:] = [short(x) for x in node.output]
        for vi in graph.value_info:
            vi.name = short(vi.name)
        renamed = len(names)
    if config.strip_docs:
        proto.doc_string = ""
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
    if config.strip_value_info:
        del graph.value_info[:]
    save_onnx(proto, out_path)
    info = {
        "renamed_tensors": renamed,
        "skipped_rename": "control-flow subgraphs" if has_subgraphs and config.rename else None,
        "bytes_saved": before - Path(out_path).stat().st_size,
    }
    return PassResult(Path(out_path), info)
