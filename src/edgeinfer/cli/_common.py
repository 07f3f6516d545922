"""Helpers shared by CLI commands: reading input files, writing outputs, parsing options,
and progress that reads well both on a terminal and in a log file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

__all__ = [
    "FALLBACK_HELP",
    "PROVIDERS_HELP",
    "named_inputs",
    "parse_dims",
    "parse_providers",
    "preview",
    "read_inputs",
    "status",
    "write_outputs",
]

PROVIDERS_HELP = (
    "Execution providers: 'auto' (best available), or exactly these, e.g. 'cuda' or "
    "'cuda,cpu' (one that is missing is an error; see --fallback)."
)
FALLBACK_HELP = "Run on what is available when a provider asked for with --providers is not."


def parse_providers(value: str) -> str | list[str]:
    """``"auto"`` stays as is; ``"cuda, cpu"`` -> ``["cuda", "cpu"]``."""
    if value.strip() == "auto":
        return "auto"
    return [p.strip() for p in value.split(",") if p.strip()]


def named_inputs(path: Path, inputs: Any, names: Sequence[str]) -> Any:
    """``inputs`` as read from ``path``, refused in CLI terms when one array cannot feed
    a model of several inputs (the library's own message speaks of Python dicts)."""
    if isinstance(inputs, dict) or len(names) == 1:
        return inputs
    listed = ", ".join(names)
    raise InputError(
        f"{path}: holds one array but the model has {len(names)} inputs; pass a .npz "
        f"(or .json) with arrays named {listed}"
    )


def preview(value: np.ndarray, count: int = 6) -> str:
    """The first few values of an array on one line: fixed precision, never numpy's
    wrapped text (which can start a line with a separator)."""
    flat = value.ravel()[:count]
    if value.dtype.kind == "f":
        items = [f"{float(v):.4g}" for v in flat]
    elif value.dtype.kind == "b":
        items = [str(bool(v)) for v in flat]
    elif value.dtype.kind in "iu":
        items = [str(int(v)) for v in flat]
    else:
        items = [repr(v.item() if hasattr(v, "item") else v) for v in flat]
    more = ", ..." if value.size > count else ""
    return f"[{', '.join(items)}{more}]"


@contextmanager
def status(console: Console, message: str) -> Iterator[Callable[[str], None]]:
    """Show progress: a spinner on a terminal, one flushed line per update elsewhere.

    Yields ``update(text)``. Rich draws spinners and progress bars only on a terminal;
    written to a file or a pipe they show nothing until the end, so a log of a long run
    would say nothing while it runs. There every update becomes its own line, printed
    without markup (progress text quotes shapes and paths).
    """
    if console.is_terminal:
        with console.status(message) as spinner:
            yield lambda text: spinner.update(text)
        return

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)  # rich flushes

    line(message)
    yield line


def read_inputs(path: Path) -> Any:
    """Inputs from ``.npy`` (one array), ``.npz`` (name -> array) or ``.json``.

    JSON is either ``{"name": nested list, ...}`` or one nested list for a one-input model.
    """
    import numpy as np

    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "inputs" in data and isinstance(data["inputs"], dict):
                data = data["inputs"]
            return data
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read inputs ({exc})") from None
    raise InputError(f"{path}: unsupported input file {suffix!r}; expected .npy, .npz or .json")


def write_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    import numpy as np

    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        np.savez(path, **outputs)  # type: ignore[arg-type]
    elif suffix == ".npy":
        if len(outputs) != 1:
            raise InputError(f"{path}: the model has {len(outputs)} outputs; write .npz or .json")
        np.save(path, next(iter(outputs.values())))
    elif suffix == ".json":
        path.write_text(json.dumps({k: v.tolist() for k, v in outputs.items()}) + "\n")
    else:
        raise InputError(f"{path}: unsupported output file {suffix!r}; use .npz, .npy or .json")


def parse_dims(values: list[str] | None) -> dict[str, int]:
    """``["sequence=128", "x.2=48,x.3=320"]`` -> ``{"sequence": 128, "x.2": 48, "x.3": 320}``.

    Each value of a repeatable ``--dim`` may hold several comma-separated ``NAME=SIZE``.
    """
    dims: dict[str, int] = {}
    for value in values or []:
        for item in value.split(","):
            name, sep, size = item.partition("=")
            if not sep or not name.strip() or not size.strip().isdigit() or int(size) <= 0:
                raise InputError(
                    f"--dim {item!r}: expected NAME=SIZE with SIZE > 0, e.g. sequence=128 "
                    "or x.2=48 (INPUT.AXIS for an unnamed dim)"
                )
            dims[name.strip()] = int(size)
    return dims
