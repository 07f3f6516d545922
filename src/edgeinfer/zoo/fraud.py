"""Fraud classifier: a scikit-learn pipeline on card transactions, converted with skl2onnx.

:func:`load_data` draws synthetic card transactions with named, realistically distributed
features (:data:`FEATURES`: amount, hour, distances, chip/PIN use, account age, ...) and
labels them from a hidden risk model with interactions, so about 3% are fraud and the
classes overlap as in real data. :func:`train` fits ``StandardScaler`` + gradient-boosted
trees (or a logistic regression); :func:`export_onnx` converts the pipeline with
ZipMap disabled, so the model's outputs are plain tensors: ``label`` int64 [N] and
``probabilities`` float32 [N,2] (column 1: fraud). :func:`build` records accuracy, F1,
ROC AUC and average precision on a stratified held-out split.

>>> from edgeinfer import zoo
>>> bundle = zoo.fraud.build("bundles/fraud")             # doctest: +SKIP
>>> edgeinfer.load(bundle.path).predict(x[:5])["probabilities"][:, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.zoo._common import ZooError, require, save_onnx

__all__ = ["FEATURES", "NAME", "build", "export_onnx", "load_data", "metrics", "train"]

NAME = "fraud-classifier"
FEATURES = (
    "amount_usd",
    "hour_of_day",
    "distance_from_home_km",
    "distance_from_last_km",
    "ratio_to_median_purchase",
    "account_age_days",
    "transactions_24h",
    "online_order",
    "used_chip",
    "used_pin",
    "repeat_retailer",
    "foreign_merchant",
)
FRAUD_RATE = 0.03  # target share of fraudulent transactions
ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
Classifier = Literal["gbt", "logreg"]
_RISK_GAIN = 2.2  # how sharply the hidden risk separates fraud from legitimate use


def _require(module: str) -> Any:
    return require(module, "scikit-learn", "sklearn", "The fraud example model")


def _transactions(n: int, rng: np.random.Generator) -> np.ndarray:
    online = rng.random(n) < 0.35
    chip = ~online & (rng.random(n) < 0.8)
    cols = {
        "amount_usd": rng.lognormal(3.4, 1.0, n),
        "hour_of_day": np.mod(rng.normal(14.0, 4.5, n), 24.0),
        "distance_from_home_km": rng.lognormal(1.8, 1.2, n),
        "distance_from_last_km": rng.lognormal(0.8, 1.3, n),
        "ratio_to_median_purchase": rng.lognormal(0.0, 0.8, n),
        "account_age_days": rng.gamma(2.0, 400.0, n),
        "transactions_24h": rng.poisson(2.5, n).astype(np.float64),
        "online_order": online,
        "used_chip": chip,
        "used_pin": chip & (rng.random(n) < 0.5),
        "repeat_retailer": rng.random(n) < 0.85,
        "foreign_merchant": rng.random(n) < 0.06,
    }
    return np.stack([np.asarray(cols[f], dtype=np.float64) for f in FEATURES], axis=1)


def _risk(x: np.ndarray) -> np.ndarray:
    """The hidden log-odds of fraud (before the intercept)."""
    f = {name: x[:, i] for i, name in enumerate(FEATURES)}
    night = (f["hour_of_day"] < 5.0) | (f["hour_of_day"] > 23.0)
    risk = _RISK_GAIN * (
        1.3 * np.log(f["ratio_to_median_purchase"])
        + 0.5 * np.log1p(f["distance_from_home_km"])
        + 0.4 * np.log1p(f["distance_from_last_km"])
        + 0.9 * f["online_order"]
        - 1.4 * f["used_chip"]
        - 1.0 * f["used_pin"]
        - 0.6 * f["repeat_retailer"]
        + 1.0 * f["foreign_merchant"]
        + 1.0 * night
        + 1.2 * (f["online_order"] * f["foreign_merchant"] * night)
        + 0.6 * (f["transactions_24h"] > 5)
        - 0.4 * np.log1p(f["account_age_days"] / 30.0)
    )
    return np.asarray(risk, dtype=np.float64)


def load_data(
    n: int = 8000, seed: int = 0, test_size: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 [N, len(FEATURES)], int64 labels.

    About :data:`FRAUD_RATE` of the transactions are fraud (label 1); the split is
    stratified and deterministic for a given ``seed``.
    """
    if n < 200:
        raise ZooError(f"n must be at least 200 transactions, got {n!r}")
    rng = np.random.default_rng(seed)
    x = _transactions(n, rng)
    risk = _risk(x)
    lo, hi = -30.0, 30.0
    for _ in range(60):  # intercept that gives the target fraud rate on average
        mid = (lo + hi) / 2
        rate = float(np.mean(1.0 / (1.0 + np.exp(-(risk + mid)))))
        lo, hi = (mid, hi) if rate < FRAUD_RATE else (lo, mid)
    p = 1.0 / (1.0 + np.exp(-(risk + lo)))
    y = (rng.random(n) < p).astype(np.int64)
    selection = _require("sklearn.model_selection")
    x_train, x_test, y_train, y_test = selection.train_test_split(
        x.astype(np.float32), y, test_size=test_size, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


def train(
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    *,
    classifier: Classifier = "gbt",
    seed: int = 0,
) -> Any:
    """Fit ``StandardScaler`` + a classifier; returns the fitted ``sklearn`` Pipeline.

    ``classifier``: ``"gbt"`` (100 depth-3 gradient-boosted trees) or ``"logreg"``
    (class-balanced logistic regression, the smallest possible model).
    """
    if x is None or y is None:
        x, y, _, _ = load_data(seed=seed)
    pipeline = _require("sklearn.pipeline")
    preprocessing = _require("sklearn.preprocessing")
    if classifier == "gbt":
        ensemble = _require("sklearn.ensemble")
        clf = ensemble.GradientBoostingClassifier(
            n_estimators=100, max_depth=3, learning_rate=0.1, random_state=seed
        )
    elif classifier == "logreg":
        linear = _require("sklearn.linear_model")
        clf = linear.LogisticRegression(max_iter=1000, class_weight="balanced")
    else:
        raise ZooError(f"unknown classifier {classifier!r}; expected 'gbt' or 'logreg'")
    pipe = pipeline.Pipeline([("scaler", preprocessing.StandardScaler()), ("classifier", clf)])
    return pipe.fit(x, y)


def export_onnx(pipeline: Any, path: str | os.PathLike[str]) -> Path:
    """Convert a fitted pipeline: ``features`` float32 [N,12] -> ``label``, ``probabilities``."""
    skl2onnx = require("skl2onnx", "skl2onnx", "sklearn", "Converting the fraud model to ONNX")
    types = require(
        "skl2onnx.common.data_types", "skl2onnx", "sklearn", "Converting the fraud model"
    )
    n_features = len(FEATURES)
    model = skl2onnx.convert_sklearn(
        pipeline,
        name=NAME,
        initial_types=[("features", types.FloatTensorType([None, n_features]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=dict(ONNX_OPSETS),
    )
    return save_onnx(model, Path(path))


def metrics(labels: np.ndarray, fraud_probability: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (fraud class), ROC AUC and average precision."""
    m = _require("sklearn.metrics")
    return {
        "accuracy": round(float(m.accuracy_score(y, labels)), 6),
        "precision": round(float(m.precision_score(y, labels, zero_division=0)), 6),
        "recall": round(float(m.recall_score(y, labels)), 6),
        "f1": round(float(m.f1_score(y, labels)), 6),
        "roc_auc": round(float(m.roc_auc_score(y, fraud_probability)), 6),
        "average_precision": round(float(m.average_precision_score(y, fraud_probability)), 6),
    }


def build(
    out_dir: str | os.PathLike[str],
    version: int = 1,
    seed: int = 0,
    *,
    classifier: Classifier = "gbt",
    overwrite: bool = False,
) -> Bundle:
    """Train, convert and bundle the fraud classifier, with held-out metrics and a golden sample.

    The metrics are measured with ONNX Runtime on the held-out split.
    """
    from edgeinfer.runtime.model import load

    x_train, y_train, x_test, y_test = load_data(seed=seed)
    pipe = train(x_train, y_train, classifier=classifier, seed=seed)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-fraud-") as tmp:
        path = export_onnx(pipe, Path(tmp) / f"{NAME}.onnx")
        with load(path, providers=["cpu"]) as model:
            out = model.predict({"features": x_test})
        scores = metrics(out["label"], out["probabilities"][:, 1], y_test)
        scores["fraud_rate"] = round(float(np.mean(y_test)), 6)
        fraud_rows = np.flatnonzero(y_test == 1)[:4]
        golden = np.concatenate([x_test[:4], x_test[fraud_rows]])
        return Bundle.create(
            path,
            out_dir,
            name=NAME,
            version=version,
            golden_inputs={"features": golden},
            atol=1e-5,
            labels=("legitimate", "fraud"),
            metrics=scores,
            recipe={
                "trainer": "edgeinfer.zoo.fraud",
                "classifier": classifier,
                "seed": seed,
                "features": list(FEATURES),
                "target_opset": dict(ONNX_OPSETS),
                "converter": "skl2onnx (zipmap disabled)",
            },
            source=f"{NAME}.onnx",
            overwrite=overwrite,
        )
