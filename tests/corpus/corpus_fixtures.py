"""What the corpus fixtures hand the tests: a prepared model (file, inputs, plain-runtime
reference) and the one server that serves the whole corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from corpus_build import reference
from corpus_models import CorpusModel, by_id, locate

EVAL_SAMPLES = 6  # optimize's eval set: seconds, not minutes
CALIBRATION_SAMPLES = 3


@dataclass(frozen=True)
class Prepared:
    model: CorpusModel
    path: Path  # the model file, as shipped (or as edgeinfer's converter wrote it)
    feeds: dict[str, np.ndarray]  # one realistic call
    sample: Path  # the same call as .npz, for --input
    expected: dict[str, np.ndarray]  # plain ONNX Runtime / LiteRT outputs on ``feeds``
    eval_set: Path | None  # .npz with 'labels' where the model has them (batchable only)
    calibration: Path | None


class Corpus:
    """Prepares a model on first use; later tests of the same model reuse it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Prepared] = {}

    def get(self, model_id: str) -> Prepared:
        if model_id not in self._cache:
            self._cache[model_id] = self._prepare(by_id(model_id))
        return self._cache[model_id]

    def _prepare(self, model: CorpusModel) -> Prepared:
        out = self.root / model.id
        out.mkdir(parents=True, exist_ok=True)
        path = locate(model, self.root / "built")
        feeds = model.make(1, 0)
        sample = out / "sample.npz"
        np.savez(sample, **feeds)
        expected = reference(path, feeds) if model.id != "ort-logreg-iris" else {}
        eval_set = calibration = None
        if model.batchable:
            data = model.make(EVAL_SAMPLES, 1)
            if model.labels is not None:
                data["labels"] = model.labels(EVAL_SAMPLES, 1)
            eval_set = out / "eval.npz"
            np.savez(eval_set, **data)
            calibration = out / "calibration.npz"
            np.savez(calibration, **model.make(CALIBRATION_SAMPLES, 2))
        return Prepared(model, path, feeds, sample, expected, eval_set, calibration)


@dataclass(frozen=True)
class Served:
    rest: str  # host:port
    grpc: str  # host:port
    log: Path
