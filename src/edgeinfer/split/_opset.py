"""The opset compression needs: the halves of an older model, upgraded and checked.

Cut and output compression add nodes written for ONNX opset 13 or newer (reductions,
``Reshape`` and ``Cast`` as opset 13 defines them) to the halves. Paddle exports at opset
11 and 12 (PP-OCR), so such a model is first upgraded with ``onnx.version_converter``, as
the optimize pipeline prepares a model for per-channel quantization
(:mod:`edgeinfer.optimize.passes.prepare`). The converter keeps every tensor name, so the
cuts listed on the original graph cut the upgraded one at the same place.

An upgrade is only used after the upgraded model gave the original's outputs on the
profiling inputs: a converter adapter that changed what an operator computes would
otherwise show up as compression error.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeinfer.errors import InputError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "COMPRESS_OPSET",
    "UPGRADE_TOLERANCE",
    "default_opset",
    "max_error",
    "upgrade_for_compression",
]

COMPRESS_OPSET = 13  # what compress_split and compress_outputs build for
UPGRADE_TOLERANCE = 1e-4  # largest difference, relative to the outputs' magnitude (>= 1)


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset; 0 if it imports none."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def max_error(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference over the numeric outputs of two runs."""
    errs = [
        float(np.abs(got[k].astype(np.float64) - v.astype(np.float64)).max(initial=0.0))
        for k, v in want.items()
        if v.dtype.kind in "fiub"
    ]
    return max(errs, default=0.0)


def upgrade_for_compression(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    *,
    what: str,
    flags: str,
    name: str,
    threads: int | None = 1,
) -> tuple[onnx.ModelProto, str | None]:
    """``(model, note)``: ``model`` itself and no note when its opset is new enough,
    else the model upgraded to :data:`COMPRESS_OPSET` and one line saying so and how
    closely it matched ``want`` (the original's outputs on ``feeds``).

    ``what`` names the compression ("cut compression"), ``flags`` the options that ask
    for it (``--compress``), for the error when the upgrade fails or changes the outputs.
    """
    from onnx import version_converter

    from edgeinfer.runtime import load
    from edgeinfer.split.extract import save_model

    have = default_opset(model)
    if have >= COMPRESS_OPSET:
        return model, None
    drop = f"split without {flags}, or convert the model to opset {COMPRESS_OPSET} first"
    try:
        upgraded = version_converter.convert_version(model, COMPRESS_OPSET)
    except Exception as exc:  # the converter has no adapter for some operator
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(
            f"{name}: {what} needs ONNX opset >= {COMPRESS_OPSET}; upgrading opset {have} "
            f"failed ({first}); {drop}"
        ) from None
    with tempfile.TemporaryDirectory(prefix=".opset-") as tmp:
        path = save_model(upgraded, Path(tmp) / "upgraded.onnx")
        try:
            opts: dict[str, Any] = {"providers": ["cpu"], "threads": threads}
            with load(path, **opts) as m:
                got = m.predict(dict(feeds))
        except Exception as exc:  # an adapter wrote a graph ONNX Runtime refuses
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InputError(
                f"{name}: {what} needs ONNX opset >= {COMPRESS_OPSET}; the model upgraded "
                f"from opset {have} does not run ({first}); {drop}"
            ) from None
    err = max_error(want, got)
    scale = max((float(np.abs(v).max(initial=0.0)) for v in want.values()), default=0.0)
    if not err <= UPGRADE_TOLERANCE * max(1.0, scale):
        raise InputError(
            f"{name}: {what} needs ONNX opset >= {COMPRESS_OPSET}; upgrading opset {have} "
            f"changed the outputs (max error {err:.2g} on the profiling inputs); {drop}"
        )
    return upgraded, (
        f"{name}: upgraded ONNX opset {have} -> {COMPRESS_OPSET} for {what}; the upgraded "
        f"model matches the original on the profiling inputs (max error {err:.2g})"
    )
