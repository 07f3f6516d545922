"""``edgeinfer inspect PATH``: what a bundle or model file is and how it would run here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeinfer.cli._common import FALLBACK_HELP, PROVIDERS_HELP


def _size(tensor: Any) -> int:
    """Elements of a TensorProto (or SparseTensorProto: its stored values)."""
    dims = tensor.values.dims if hasattr(tensor, "values") else tensor.dims
    n = 1
    for d in dims:
        n *= int(d)
    return n


def count_parameters(graph: Any) -> int:
    """What a user means by a model's parameters, however the exporter stored them.

    Initializers of every dtype (quantized weights are int8), sparse initializers, the
    tensors of ``Constant`` nodes (Paddle's exporter writes every weight that way), the
    float lists and tensors of ``ai.onnx.ml`` operators (a random forest's thresholds and
    leaf weights are attributes of one TreeEnsemble node), and all of it inside subgraphs
    (``If``, ``Loop``, ``Scan`` bodies).
    """
    from onnx import AttributeProto

    total = sum(_size(t) for t in graph.initializer)
    total += sum(_size(t) for t in graph.sparse_initializer)
    for node in graph.node:
        ml = node.domain == "ai.onnx.ml"
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                total += count_parameters(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                total += sum(count_parameters(g) for g in attr.graphs)
            elif node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                if attr.type == AttributeProto.TENSOR:
                    total += _size(attr.t)
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    total += _size(attr.sparse_tensor)
                elif attr.type in (AttributeProto.FLOATS, AttributeProto.INTS):
                    total += len(attr.floats) + len(attr.ints)
                elif attr.type in (AttributeProto.FLOAT, AttributeProto.INT):
                    total += 1
            elif ml and attr.type == AttributeProto.FLOATS:
                total += len(attr.floats)
            elif ml and attr.type == AttributeProto.TENSOR:
                total += _size(attr.t)
    return total


def _domains(graph: Any) -> set[str]:
    """The operator domains a graph's nodes use, subgraphs included (``""`` read as
    ``ai.onnx``)."""
    from onnx import AttributeProto

    used: set[str] = set()
    for node in graph.node:
        used.add(node.domain or "ai.onnx")
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                used |= _domains(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    used |= _domains(g)
    return used


LONG_DIM = 32  # symbolic dims longer than this (characters) are shown as "?"
_SYMBOL = re.compile(r"^[\w.:-]+$")  # a name; anything else is a shape expression


def _shape(shape: tuple[int | str | None, ...] | None) -> tuple[str, bool]:
    """A shape for the table, and whether a symbolic dim became ``?``.

    A shape-inference expression (``floor(...)``) runs to a dozen lines and a very long name
    reads no better, so each is ``?`` (``--json`` has it in full). Dims are separated by
    ", " so that a narrow column wraps between dims, never inside a name.
    """
    if shape is None:
        return "[any shape]", False
    parts: list[str] = []
    shortened = False
    for d in shape:
        if isinstance(d, str) and (len(d) > LONG_DIM or not _SYMBOL.match(d)):
            parts.append("?")
            shortened = True
        else:
            parts.append("?" if d is None else str(d))
    return f"[{', '.join(parts)}]", shortened


def _onnx_facts(path: Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # the runtime gives the precise error when it loads the model
        return {}
    used = _domains(proto.graph)
    # Quantizers declare every domain they know; only the ones the nodes use say anything.
    opsets = [d for d in proto.opset_import if (d.domain or "ai.onnx") in used] or list(
        proto.opset_import
    )
    return {
        "IR version": proto.ir_version,
        "opset": ", ".join(f"{d.domain or 'ai.onnx'} {d.version}" for d in opsets),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "nodes": len(proto.graph.node),
        "parameters": count_parameters(proto.graph),
    }


def inspect(
    path: Path = typer.Argument(
        ...,
        metavar="MODEL",
        help="Bundle directory, packed .tar, or .onnx/.tflite file.",
        show_default=False,
    ),
    providers: str = typer.Option("auto", help=PROVIDERS_HELP),
    fallback: bool = typer.Option(False, "--fallback", help=FALLBACK_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show a model's signature, size, opset and the providers it would run on."""
    import json

    from edgeinfer.bundle import Bundle
    from edgeinfer.cli._common import parse_providers
    from edgeinfer.runtime.model import load
    from edgeinfer.runtime.providers import available_providers

    bundle = Bundle.open(path)
    model = load(path, providers=parse_providers(providers), fallback=fallback)
    m = bundle.manifest
    facts: dict[str, Any] = {
        "name": m.name,
        "version": m.version,
        "format": m.format,
        "model file": str(bundle.model_path),
        "size": f"{m.model.size / 1e6:.3f} MB ({m.model.size} bytes)",
        "sha256": m.model.sha256,
        "backend": model.backend.name,
        "providers in use": ", ".join(model.providers),
        "providers available": ", ".join(
            model.providers if m.format == "tflite" else available_providers()
        ),
    }
    if m.format == "onnx":
        facts.update(_onnx_facts(bundle.model_path))
    if not bundle.bare:
        facts["golden sample"] = "yes" if m.golden else "no"
        if m.labels:
            facts["labels"] = ", ".join(m.labels[:10]) + (" ..." if len(m.labels) > 10 else "")
        for key, value in m.metrics.items():
            facts[f"metric {key}"] = value
        recipe = m.provenance.get("recipe")
        if recipe:
            facts["recipe"] = json.dumps(recipe)
    if as_json:
        facts["inputs"] = [s.to_dict() for s in model.inputs]
        facts["outputs"] = [s.to_dict() for s in model.outputs]
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    # Cells are Text, not markup ("[N,3,64,64]" would vanish). Long values (paths) fold
    # onto further lines rather than being cut; the hash is printed whole on its own line.
    console = Console()
    table = Table(title=Text(f"{m.name} v{m.version}"), show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in facts.items():
        if key == "sha256":
            continue
        shown = f"{value:,}" if key == "parameters" else str(value)
        table.add_row(key, Text(shown))
    console.print(table)
    console.print(f"sha256 {m.model.sha256}", markup=False, highlight=False, soft_wrap=True)
    sig = Table(title="signature")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col, overflow="fold")
    shortened = False
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        for s in specs:
            shown, long = _shape(s.shape)
            shortened |= long
            sig.add_row(kind, Text(s.name), s.dtype, Text(shown))
    console.print(sig)
    if shortened:
        console.print(
            "? : a long symbolic size (in full with --json; size it with --dim INPUT.AXIS=N)",
            markup=False,
            highlight=False,
        )
    model.close()


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
