"""``edgeinfer inspect PATH``: what a bundle or model file is and how it would run here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


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
        "parameters": sum(int(__import__("numpy").prod(t.dims)) for t in proto.graph.initializer),
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
    console = Console()
    table = Table(title=f"{m.name} v{m.version}", show_header=False)
    for key, value in facts.items():
        table.add_row(key, str(value))
    console.print(table)
    sig = Table(title="signature")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col)
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        for s in specs:
            sig.add_row(kind, s.name, s.dtype, str(list(s.shape) if s.shape is not None else "?"))
    console.print(sig)
    model.close()


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
