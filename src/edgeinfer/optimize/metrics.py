"""Metrics: task metrics against labels, fidelity metrics against the original model.

=================  ======================================================  =========
name               what                                                    better
=================  ======================================================  =========
``accuracy``       top-1 accuracy vs integer labels                        higher
``topK``           label among the K highest scores (``top5``, ``top-3``)  higher
``f1``             macro-averaged F1 vs integer labels                     higher
``mse``, ``mae``   vs labels if given, else vs the original's outputs      lower
``cosine``         mean cosine similarity to the original's outputs        higher
``min_cosine``     the worst sample's cosine similarity                    higher
``agreement``      top-1 agreement with the original                       higher
``max_abs_error``  largest absolute difference from the original           lower
=================  ======================================================  =========

Outputs and references are compared per sample (axis 0), each sample flattened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgeinfer.errors import InputError

__all__ = ["METRIC_NAMES", "Metric", "compute", "parse_metric", "standard_metrics"]

METRIC_NAMES = (
    "accuracy",
    "topK",
    "f1",
    "mse",
    "mae",
    "cosine",
    "min_cosine",
    "agreement",
    "max_abs_error",
)
_ALIASES = {
    "acc": "accuracy",
    "top1": "accuracy",
    "f1_macro": "f1",
    "cos": "cosine",
    "mean_cosine": "cosine",
    "top1_agreement": "agreement",
    "max_abs": "max_abs_error",
}
_LOWER_IS_BETTER = frozenset({"mse", "mae", "max_abs_error"})
_NEEDS_LABELS = frozenset({"accuracy", "topk", "f1"})
_NEEDS_REFERENCE = frozenset({"cosine", "min_cosine", "agreement", "max_abs_error"})


@dataclass(frozen=True)
class Metric:
    """A parsed metric name."""

    name: str  # canonical, e.g. "accuracy", "top5", "cosine"
    kind: str  # "accuracy", "topk", "f1", "mse", "mae", "cosine", ...
    k: int = 1

    @property
    def higher_is_better(self) -> bool:
        return self.kind not in _LOWER_IS_BETTER

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """The values the metric can take (None: unbounded), e.g. to clamp a plot's axis."""
        if self.kind in _LOWER_IS_BETTER:
            return 0.0, None
        return (-1.0 if self.kind in ("cosine", "min_cosine") else 0.0), 1.0

    @property
    def needs_labels(self) -> bool:
        return self.kind in _NEEDS_LABELS

    @property
    def needs_reference(self) -> bool:
        return self.kind in _NEEDS_REFERENCE


def parse_metric(name: str) -> Metric:
    """``"accuracy"``, ``"top5"``, ``"cosine"``, ... -> :class:`Metric`; else InputError."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    m = re.fullmatch(r"top_?(\d+)", key)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise InputError(f"metric {name!r}: k must be >= 1")
        return Metric("accuracy", "accuracy") if k == 1 else Metric(f"top{k}", "topk", k)
    if key in _LOWER_IS_BETTER | _NEEDS_LABELS | _NEEDS_REFERENCE and key != "topk":
        return Metric(key, key)
    raise InputError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")


def _rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(len(a), -1)


def _predicted_class(outputs: np.ndarray) -> np.ndarray:
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        flat = outputs.reshape(len(outputs))
        if flat.dtype.kind in "iub":
            return flat.astype(np.int64)  # already class ids (a classifier's label output)
        return (flat > 0.5).astype(np.int64)  # one score: binary decision
    classes: np.ndarray = np.argmax(outputs.reshape(len(outputs), -1), axis=1)
    return classes


def _f1_macro(pred: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for c in np.union1d(pred, labels):
        tp = float(np.sum((pred == c) & (labels == c)))
        fp = float(np.sum((pred == c) & (labels != c)))
        fn = float(np.sum((pred != c) & (labels == c)))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def _class_labels(metric: Metric, labels: np.ndarray | None, n: int) -> np.ndarray:
    if labels is None:
        raise InputError(f"metric {metric.name!r} needs labels (pass --labels / labels=)")
    flat = np.asarray(labels).reshape(n, -1)
    if flat.shape[1] != 1 or flat.dtype.kind not in "iub":
        raise InputError(
            f"metric {metric.name!r} needs one integer class label per sample, got labels of "
            f"dtype {flat.dtype.name} and shape {list(np.asarray(labels).shape)}"
        )
    return flat[:, 0].astype(np.int64)


def compute(
    metric: Metric,
    outputs: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> float:
    """The value of ``metric`` for ``outputs`` (samples on axis 0)."""
    n = len(outputs)
    if n == 0:
        raise InputError("cannot compute a metric on zero samples")
    kind = metric.kind
    if kind in ("accuracy", "f1"):
        y = _class_labels(metric, labels, n)
        pred = _predicted_class(outputs)
        return float(np.mean(pred == y)) if kind == "accuracy" else _f1_macro(pred, y)
    if kind == "topk":
        y = _class_labels(metric, labels, n)
        scores = _rows(outputs)
        if scores.shape[1] < metric.k:
            raise InputError(
                f"metric {metric.name!r}: the output has only {scores.shape[1]} scores"
            )
        top = np.argpartition(-scores, metric.k - 1, axis=1)[:, : metric.k]
        return float(np.mean(np.any(top == y[:, None], axis=1)))
    if kind in ("mse", "mae"):
        target = labels if labels is not None else reference
        if target is None:
            raise InputError(f"metric {metric.name!r} needs labels or a reference model")
        t = np.asarray(target, dtype=np.float64)
        if t.size != outputs.size:
            raise InputError(
                f"metric {metric.name!r}: labels of shape {list(t.shape)} do not match the "
                f"output's shape {list(outputs.shape)}"
            )
        diff = _rows(outputs) - t.reshape(n, -1)
        return float(np.mean(diff**2) if kind == "mse" else np.mean(np.abs(diff)))
    if reference is None:
        raise InputError(f"metric {metric.name!r} compares with the original model's outputs")
    if reference.shape != outputs.shape:
        raise InputError(
            f"metric {metric.name!r}: output shape {list(outputs.shape)} differs from the "
            f"original's {list(reference.shape)}"
        )
    if kind == "agreement":
        return float(np.mean(_predicted_class(outputs) == _predicted_class(reference)))
    if kind == "max_abs_error":
        return float(np.max(np.abs(_rows(outputs) - _rows(reference))))
    a, b = _rows(outputs), _rows(reference)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both = (na > 0) & (nb > 0)
    cos = np.sum(a * b, axis=1) / np.where(both, na * nb, 1.0)
    # Two all-zero rows agree perfectly; one all-zero row against a non-zero one does not.
    cos = np.where(both, cos, np.where((na == 0) & (nb == 0), 1.0, 0.0))
    return float(np.mean(cos) if kind == "cosine" else np.min(cos))


def standard_metrics(
    main: Metric,
    outputs: np.ndarray,
    *,
    labels: np.ndarray | None,
    reference: np.ndarray | None,
) -> dict[str, float]:
    """``main`` plus the metrics that make sense for what is given (labels, reference)."""
    wanted = [main]
    if labels is not None:
        y = np.asarray(labels)
        if y.dtype.kind in "iub" and y.size == len(outputs):
            wanted += [Metric("accuracy", "accuracy"), Metric("f1", "f1")]
        elif y.dtype.kind == "f":
            wanted += [Metric("mse", "mse"), Metric("mae", "mae")]
    if reference is not None and reference.shape == outputs.shape:
        wanted += [Metric(k, k) for k in ("cosine", "min_cosine", "max_abs_error")]
        classifying = main.kind in ("accuracy", "topk", "f1", "agreement") or (
            labels is not None and np.asarray(labels).dtype.kind in "iub"
        )
        if classifying and outputs.ndim == 2 and outputs.shape[1] > 1:
            wanted.append(Metric("agreement", "agreement"))
    out: dict[str, float] = {}
    for m in wanted:
        if m.name not in out:
            out[m.name] = compute(m, outputs, labels=labels, reference=reference)
    return out
