"""Optimization: make a model small and fast for a device, and prove it is still right.

``optimize(model, eval_data, out_dir, ...)`` runs the accuracy-gated search
(:mod:`.search`): graph optimization, dynamic and static INT8 with each calibration method,
the same with the most error-prone nodes kept in float, FP16 where a provider can use it.
Every candidate is measured (:mod:`.evaluate`); the fastest or smallest one within the
accuracy budget is bundled with its recipe and metrics, and a report (:mod:`.report`) is
written next to it. ``optimize_tflite`` (:mod:`.tflite`) runs the same gate for LiteRT on the
TFLite variants of a Keras model or SavedModel. ``distill`` trains a smaller student on any
runnable teacher. ``qat_torch`` (:mod:`.qat_torch`) fine-tunes a PyTorch module with fake
quantization and sets its QDQ INT8 export beside post-training INT8.
Passes can also be used one by one (:mod:`.passes`).

>>> from edgeinfer.optimize import SearchConfig, optimize
>>> optimize("bundles/minilm", "eval.npz", "bundles/minilm-int8",
...          config=SearchConfig(metric="cosine", max_drop=0.01))   # doctest: +SKIP
"""

from __future__ import annotations

from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.data import Dataset, load_dataset
from edgeinfer.optimize.errors import NotApplicable, OptimizeError
from edgeinfer.optimize.evaluate import Evaluation, compare_latency, evaluate
from edgeinfer.optimize.metrics import Metric, parse_metric
from edgeinfer.optimize.pipeline import OptimizeResult, distill, optimize
from edgeinfer.optimize.qat_torch import EpochStats, QATConfig, qat_torch
from edgeinfer.optimize.recipe import Recipe, Step
from edgeinfer.optimize.search import Candidate, SearchConfig, SearchResult, search
from edgeinfer.optimize.tflite import optimize_tflite

__all__ = [
    "Budget",
    "Candidate",
    "Dataset",
    "EpochStats",
    "Evaluation",
    "Metric",
    "NotApplicable",
    "OptimizeError",
    "OptimizeResult",
    "QATConfig",
    "Recipe",
    "SearchConfig",
    "SearchResult",
    "Step",
    "compare_latency",
    "distill",
    "evaluate",
    "load_dataset",
    "optimize",
    "optimize_tflite",
    "parse_metric",
    "qat_torch",
    "search",
]
