"""The pass contract and what every pass shares.

A pass is a module with a frozen dataclass config and one function::

    run(model: Path, config: XConfig, out_path: Path) -> PassResult

model in (an ONNX file), config, model out (written to ``out_path``), as Olive's passes
work. ``PassResult.info`` carries what the pass wants to report (nodes quantized, sparsity,
nodes excluded). Fields of a config that hold data rather than settings (calibration sets,
student networks) are marked with ``metadata={"data": True}``; recipes record a summary of
them instead of the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.errors import InputError

__all__ = [
    "DATA",
    "PassResult",
    "config_from_options",
    "config_to_dict",
    "quiet",
    "require_choice",
    "run_tool",
]

DATA: dict[str, Any] = {"data": True}  # field metadata: the field holds data, not a setting


@dataclass(frozen=True)
class PassResult:
    """The model a pass wrote and what it has to say about it."""

    path: Path
    info: Mapping[str, Any] = field(default_factory=dict)


def require_choice(what: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`InputError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(
            f"{what} {value!r} is not supported; expected one of {', '.join(map(repr, choices))}"
        )


def config_from_options(cls: type[Any], options: Mapping[str, Any], pass_name: str) -> Any:
    """Build ``cls(**options)``; unknown option names are an :class:`InputError`."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in options if k not in names]
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for pass {pass_name!r}; "
            f"it takes {', '.join(names)}"
        )
    try:
        return cls(**options)
    except TypeError as exc:
        raise InputError(f"pass {pass_name!r}: {exc}") from None


def _summary(value: Any) -> Any:
    if value is None:
        return None
    n = getattr(value, "__len__", None)
    kind = type(value).__name__
    return f"<{kind} of {len(value)} samples>" if callable(n) else f"<{kind}>"


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly view of a config; data fields become short summaries."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("data"):
            out[f.name] = _summary(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = {"type": type(value).__name__, **config_to_dict(value)}
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        elif isinstance(value, Path):
            out[f.name] = str(value)
        else:
            out[f.name] = value
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the chatter of ONNX Runtime's tools (prints, root-logger warnings, warnings)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def run_tool(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a third-party tool quietly; its failure becomes an ``OptimizeError`` (cause kept)."""
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.optimize.errors import OptimizeError

    try:
        with quiet():
            return fn(*args, **kwargs)
    except EdgeInferError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # The cause keeps its traceback, and with it the failed tool's locals: ONNX
        # Runtime's transformer optimizer leaves a TemporaryDirectory there, which would be
        # cleaned up (with a ResourceWarning) whenever the error is collected. Let them go
        # now, quietly; the traceback's lines stay for -v.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            traceback.clear_frames(exc.__traceback__)
        raise OptimizeError(f"{what} failed: {first[:300]}") from exc
