"""Optimize on models exported by others: PP-OCR's detector, classifier and recognizer
(Paddle, paddle2onnx at opsets 11-12, weights as Constant nodes) and the output of
edgeinfer's own scikit-learn converter. Small inputs and a few calibration samples keep
each run short; what is checked is that every INT8 model loads and runs in ONNX Runtime
and stays close to the original, and that the search measures or skips every candidate
with a reason a user can act on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgeinfer
from edgeinfer.optimize import SearchConfig, optimize
from edgeinfer.optimize.passes import run_pass
from edgeinfer.optimize.passes.graph import GraphConfig
from edgeinfer.optimize.passes.prepare import default_opset
from edgeinfer.optimize.passes.static_int8 import StaticInt8Config

FAST = {"threads": 1, "repeats": 3, "final_rounds": 3, "memory": False, "screen_samples": 4}
MODELS = {
    # name: (file, input [C, H, W] kept small, single text lines?)
    "det": ("ch_PP-OCRv4_det_infer.onnx", (3, 32, 32), False),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192), True),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (3, 48, 64), True),
}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    dots = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(dots))


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    with edgeinfer.load(path, providers=["cpu"]) as model:
        return np.concatenate([next(iter(model.predict({"x": s[None]}).values())) for s in x])


@pytest.fixture(scope="module")
def prepared(ppocr_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The graph pass on a PP-OCR model, run once per model for the whole module."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(f"ppocr-{name}") / "graph.onnx"
            run_pass("graph", ppocr_models / MODELS[name][0], GraphConfig(), out)
            done[name] = out
        return done[name]

    return get


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("det", "minmax"),
        ("cls", "minmax"),
        ("cls", "entropy"),
        ("cls", "percentile"),
        ("rec", "minmax"),
    ],
)
def test_static_int8_of_paddle_models_loads_and_stays_close(
    name: str,
    method: str,
    prepared: Callable[[str], Path],
    ppocr_models: Path,
    ocr_images: Callable[..., np.ndarray],
    tmp_path: Path,
) -> None:
    _, (_, h, w), lines = MODELS[name]
    calib = ocr_images(4, h, w, seed=1, lines=lines)
    graph = prepared(name)
    assert default_opset(onnx.load(graph, load_external_data=False)) >= 13
    config = StaticInt8Config(calibration={"x": calib}, method=method)  # type: ignore[arg-type]
    result = run_pass("static_int8", graph, config, tmp_path / "int8.onnx")
    assert result.info["quantized_ops"]["DequantizeLinear"] > 10
    x = ocr_images(3, h, w, seed=2, lines=lines)
    original = _outputs(ppocr_models / MODELS[name][0], x)
    # Entropy calibration on four samples clips the classifier's few logits hard; it
    # must load and run, and it is the search that measures whether it is good enough.
    assert _cosine(_outputs(result.path, x), original) > (0.6 if method == "entropy" else 0.9)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_search_on_the_paddle_detector_measures_or_skips_every_candidate(
    ppocr_models: Path,
    ocr_images: Callable[..., np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = ocr_images(8, 32, 32, seed=2)
    config = SearchConfig(
        metric="cosine",
        max_drop="5%",
        candidates=(
            "static-int8-minmax",
            "static-int8-entropy-conv-only",
            "static+exclude-sensitive",
        ),
        **FAST,  # type: ignore[arg-type]
    )
    monkeypatch.chdir(ppocr_models.parent)  # a relative model path, as a user types it
    outcome = optimize(
        Path("models") / MODELS["det"][0],
        {"x": x},
        tmp_path / "det-int8",
        calibration={"x": ocr_images(4, 32, 32, seed=1)},
        config=config,
    )
    result = outcome.result
    statuses = {c.name: c.status for c in result.candidates}
    assert set(statuses.values()) == {"ok"}, [(c.name, c.reason) for c in result.candidates]
    graph_info = result.candidates[0].infos[0]
    assert graph_info["shape_inference"] != "none" and graph_info["opset"] == "12 -> 13"
    static = [c for c in result.candidates if c.name.startswith("static-int8")]
    assert all(c.evaluation and c.evaluation.metrics["cosine"] > 0.9 for c in static)
    # only the convolutions quantized: far fewer quantize nodes than with every operator
    full, conv = (
        next(c for c in static if c.name == n).infos[1]["quantized_ops"]["QuantizeLinear"]
        for n in ("static-int8-minmax", "static-int8-entropy-conv-only")
    )
    assert conv < 0.6 * full


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_search_on_a_scikit_learn_model_skips_int8_with_the_reason(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeinfer.convert import sklearn_to_onnx

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(x, y)
    src = tmp_path / "logreg.onnx"
    sklearn_to_onnx(pipe, src, sample=x[:32])
    # skl2onnx imports the default domain twice; the converter writes it once
    domains = [o.domain for o in onnx.load(src).opset_import]
    assert len(domains) == len(set(domains))
    config = SearchConfig(metric="accuracy", max_drop=0.01, **FAST)  # type: ignore[arg-type]
    outcome = optimize(
        src,
        {"input": x[:128]},
        tmp_path / "out",
        labels=y[:128],
        calibration={"input": x[128:160]},
        config=config,
    )
    by_name = {c.name: c for c in outcome.result.candidates}
    assert not [c.name for c in by_name.values() if c.status == "failed"]
    for name in ("dynamic-int8", "static-int8-minmax", "static-int8-entropy"):
        assert by_name[name].status == "skipped"
        assert by_name[name].reason.startswith("nothing to quantize")
        assert "Histogram" not in by_name[name].reason
    assert by_name["graph"].status == "ok"
