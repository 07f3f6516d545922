"""``edgeinfer bundle create|verify|pack|unpack``: make and check model bundles."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

bundle_app = typer.Typer(
    help="Create, verify, pack and unpack model bundles.", no_args_is_help=True
)


def _parse_metrics(items: list[str]) -> dict[str, float | str]:
    from edgeinfer.errors import InputError

    metrics: dict[str, float | str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--metric {item!r}: expected NAME=VALUE, e.g. accuracy=0.97")
        try:
            metrics[key] = float(value)
        except ValueError:
            metrics[key] = value
    return metrics


@bundle_app.command("create")
def create(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="The model file (.onnx or .tflite).", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    name: str = typer.Option(..., help="Bundle name (letters, digits, '.', '_', '-')."),
    version: int = typer.Option(1, min=0, help="Integer version."),
    golden: Path | None = typer.Option(
        None, help="Golden inputs (.npy/.npz/.json): outputs are recorded for health checks."
    ),
    atol: float = typer.Option(1e-4, help="Golden sample absolute tolerance."),
    rtol: float = typer.Option(1e-3, help="Golden sample relative tolerance."),
    labels: Path | None = typer.Option(None, help="Text file with one label per line."),
    metric: list[str] = typer.Option([], help="NAME=VALUE to record (repeatable)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle directory."),
) -> None:
    """Bundle a model file with its manifest (and golden sample)."""
    from edgeinfer.bundle import Bundle
    from edgeinfer.cli._common import read_inputs

    golden_inputs = read_inputs(golden) if golden is not None else None
    if golden is not None and not isinstance(golden_inputs, dict):
        from edgeinfer.cli._common import named_inputs
        from edgeinfer.runtime.backends import backend_for

        # One array feeds a one-input model only; say so in CLI terms before the build.
        probe = backend_for(model, providers=["cpu"])
        try:
            named_inputs(golden, golden_inputs, [s.name for s in probe.inputs])
        finally:
            probe.close()
    label_list = None
    if labels is not None:
        from edgeinfer.errors import InputError

        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise InputError(f"--labels {labels}: not a readable text file ({why})") from None
        label_list = [ln.strip() for ln in text.splitlines() if ln.strip()]
    b = Bundle.create(
        model,
        out,
        name=name,
        version=version,
        golden_inputs=golden_inputs,
        atol=atol,
        rtol=rtol,
        labels=label_list,
        metrics=_parse_metrics(metric),
        overwrite=overwrite,
    )
    Console().print(
        f"[green]created[/] {b.name} v{b.version} at {escape(str(b.path))} "
        f"({b.manifest.model.size / 1e6:.2f} MB, "
        f"golden sample: {'yes' if b.manifest.golden else 'no'})"
    )


@bundle_app.command("verify")
def verify(
    path: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory or packed .tar."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Check hashes and sizes, the manifest's signature and labels against the model, and
    reproduce the golden sample."""
    from edgeinfer.bundle import Bundle
    from edgeinfer.errors import BundleError
    from edgeinfer.runtime.model import load

    b = Bundle.open(path)
    with load(b.path, providers=["cpu"]) as model:
        problems = b.check_golden(model)
    if problems:
        raise BundleError(f"{path}: golden sample does not reproduce: {'; '.join(problems)}")
    if as_json:
        typer.echo(json.dumps(b.manifest.to_dict(), indent=2))
        return
    golden = "reproduced" if b.manifest.golden else "none"
    Console().print(
        f"[green]ok[/] {b.name} v{b.version}: hashes match, signature matches the model, "
        f"golden sample {golden}",
        highlight=False,
    )


@bundle_app.command("pack")
def pack(
    path: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory."),
    out: Path = typer.Argument(..., metavar="TAR", help="The .tar file to write."),
) -> None:
    """Pack a bundle into one deterministic .tar file."""
    from edgeinfer.bundle import Bundle

    dest = Bundle.open(path).pack(out)
    Console().print(
        f"[green]packed[/] {escape(str(path))} -> {escape(str(dest))} "
        f"({dest.stat().st_size / 1e6:.2f} MB)"
    )


@bundle_app.command("unpack")
def unpack(
    tar: Path = typer.Argument(..., metavar="TAR", help="A packed bundle (.tar)."),
    out: Path = typer.Argument(
        ..., metavar="DIR", help="Directory to extract into (must not exist)."
    ),
) -> None:
    """Safely extract and verify a packed bundle."""
    from edgeinfer.bundle import Bundle

    b = Bundle.unpack(tar, out)
    Console().print(f"[green]unpacked[/] {b.name} v{b.version} into {escape(str(b.path))}")


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")
