"""scikit-learn estimator or pipeline -> ONNX via skl2onnx, with plain tensor outputs.

Classifiers are converted with ``zipmap`` disabled, so their outputs are a ``label`` tensor
and a ``probabilities`` tensor [N, classes] instead of a list of dicts that no device
runtime or inference protocol carries. Inputs are one float32 tensor [N, features] (named
``input`` unless told otherwise). After conversion the ONNX model's predictions are checked
against the estimator's own on the sample rows.

>>> from edgeinfer.convert import sklearn_to_onnx
>>> sklearn_to_onnx(pipeline, "fraud.onnx", sample=x_train[:32])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert.errors import ConversionError
from edgeinfer.convert.onnx_io import save_onnx
from edgeinfer.convert.torch import ConversionReport
from edgeinfer.errors import MissingDependencyError

__all__ = ["sklearn_to_onnx"]

DEFAULT_OPSET = 17


def _require() -> tuple[Any, Any]:
    try:
        import skl2onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise MissingDependencyError(
            "skl2onnx", "sklearn", "Converting a scikit-learn model"
        ) from exc
    return skl2onnx, FloatTensorType


def _estimators(model: Any) -> list[Any]:
    """The model and every estimator nested in it (pipeline steps, column transformers)."""
    found = [model]
    for attr in ("steps", "transformers", "transformer_list"):
        for item in getattr(model, attr, None) or ():
            if isinstance(item, tuple) and len(item) >= 2 and hasattr(item[1], "fit"):
                found.extend(_estimators(item[1]))
    return found


def _no_zipmap(model: Any) -> dict[int, dict[str, bool]]:
    from sklearn.base import is_classifier

    return {id(e): {"zipmap": False} for e in _estimators(model) if is_classifier(e)}


def sklearn_to_onnx(
    estimator: Any,
    out_path: str | os.PathLike[str],
    *,
    sample: np.ndarray | None = None,
    n_features: int | None = None,
    input_name: str = "input",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,  # absolute tolerance for probabilities / regression outputs
) -> ConversionReport:
    """Convert a fitted estimator or pipeline to ONNX at ``out_path`` and check it.

    Give ``sample`` (a few rows of real input, used for the check) or ``n_features``.
    """
    skl2onnx, float_type = _require()
    if sample is None and n_features is None:
        raise ConversionError("give sample= (a few input rows) or n_features=")
    if sample is not None:
        sample = np.asarray(sample, dtype=np.float32)
        if sample.ndim != 2 or sample.shape[0] == 0:
            raise ConversionError(
                f"sample must be a non-empty 2-D array [rows, features], got shape "
                f"{list(sample.shape)}"
            )
        if n_features is not None and n_features != sample.shape[1]:
            raise ConversionError(
                f"n_features={n_features} but the sample has {sample.shape[1]} columns"
            )
        n_features = int(sample.shape[1])
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            onx = skl2onnx.convert_sklearn(
                estimator,
                initial_types=[(input_name, float_type([None, n_features]))],
                options=_no_zipmap(estimator),
                target_opset={"": opset, "ai.onnx.ml": 3},
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConversionError(
            f"skl2onnx could not convert {type(estimator).__name__}: {first}"
        ) from exc
    _one_opset_per_domain(onx)
    dest = save_onnx(onx, out_path)
    outputs = tuple(o.name for o in onx.graph.output)
    err = 0.0
    if check and sample is not None:
        err = _check(estimator, dest, input_name, sample, atol)
    return ConversionReport(dest, opset, (input_name,), outputs, err)


def _one_opset_per_domain(model: Any) -> None:
    """skl2onnx can import the default domain twice; quantizers refuse such a model."""
    best: dict[str, int] = {}
    for entry in model.opset_import:
        best[entry.domain] = max(best.get(entry.domain, 0), int(entry.version))
    if len(best) < len(model.opset_import):
        del model.opset_import[:]
        for domain, version in best.items():
            model.opset_import.add(domain=domain, version=version)


def _check(estimator: Any, path: Path, input_name: str, sample: np.ndarray, atol: float) -> float:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: sample})
    except Exception as exc:
        raise ConversionError(f"{path}: ONNX Runtime cannot run the converted model") from exc
    names = [o.name for o in session.get_outputs()]
    worst = 0.0
    if hasattr(estimator, "predict_proba") and len(got) >= 2:
        proba = np.asarray(estimator.predict_proba(sample), dtype=np.float64)
        onnx_proba = np.asarray(got[1], dtype=np.float64).reshape(proba.shape)
        worst = float(np.max(np.abs(onnx_proba - proba)))
        if worst > atol:
            raise ConversionError(
                f"{path}: output {names[1]!r} differs from predict_proba by up to {worst:.3g} "
                f"(tolerance {atol:g})"
            )
        labels = np.asarray(estimator.predict(sample))
        agree = float(np.mean(np.asarray(got[0]).reshape(labels.shape) == labels))
        if agree < 1.0:
            raise ConversionError(
                f"{path}: output {names[0]!r} agrees with predict() on only {agree:.1%} of "
                "the sample rows"
            )
        return worst
    want = np.asarray(estimator.predict(sample), dtype=np.float64)
    have = np.asarray(got[0], dtype=np.float64).reshape(want.shape)
    worst = float(np.max(np.abs(have - want)))
    if worst > atol * max(1.0, float(np.max(np.abs(want)))):
        raise ConversionError(
            f"{path}: output {names[0]!r} differs from predict() by up to {worst:.3g} "
            f"(tolerance {atol:g} relative to the output scale)"
        )
    return worst
