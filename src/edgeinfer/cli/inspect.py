"""``edgeinfer inspect PATH``: what a bundle or model file is and how it would run here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text


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


def _onnx_facts(path: Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # the runtime gives the precise error when it loads the model
        return {}
    return {
        "IR version": proto.ir_version,
        "opset": ", ".join(f"{d.domain or 'ai.onnx'} {d.version}" for d in proto.opset_import),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "nodes": len(proto.graph.node),
        "parameters": count_parameters(proto.graph),
    }


def inspect(
    path: Path = typer.Argument(..., help="Bundle directory, packed .tar, or .onnx/.tflite file."),
    providers: str = typer.Option("auto", help="Providers to try, e.g. 'auto' or 'cuda,cpu'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show a model's signature, size, opset and the providers it would run on."""
    import json

    from edgeinfer.bundle import Bundle
    from edgeinfer.runtime.model import load
    from edgeinfer.runtime.providers import available_providers
    from edgeinfer.tensors import format_shape

    bundle = Bundle.open(path)
    plist = "auto" if providers == "auto" else [p.strip() for p in providers.split(",")]
    model = load(path, providers=plist)
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
        "providers available": ", ".join(available_providers()),
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
    # Cells are Text, not markup ("[N,3,64,64]" would vanish), and long values (paths,
    # hashes, shape expressions) fold onto further lines rather than being cut at 80 columns.
    console = Console()
    table = Table(title=Text(f"{m.name} v{m.version}"), show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in facts.items():
        shown = f"{value:,}" if key == "parameters" else str(value)
        table.add_row(key, Text(shown))
    console.print(table)
    sig = Table(title="signature")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col, overflow="fold")
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        for s in specs:
            sig.add_row(kind, Text(s.name), s.dtype, Text(format_shape(s.shape)))
    console.print(sig)
    model.close()


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
