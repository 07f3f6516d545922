"""The search and the optimize pipeline end to end on the digits CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import BundleError, InputError
from edgeinfer.optimize import SearchConfig, optimize
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.evaluate import Evaluation
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.report import report_dir_for
from edgeinfer.optimize.search import choose

FAST = {"threads": 1, "repeats": 5, "final_rounds": 5, "memory": False}


@pytest.mark.slow
def test_optimize_picks_a_static_int8_model_within_budget(
    digits_bundle: Path, digits: tuple, tmp_path: Path
) -> None:
    x_train, _, x_test, y_test = digits
    config = SearchConfig(
        metric="accuracy",
        max_drop=0.005,
        objective="size",
        candidates=(
            "graph",
            "dynamic-int8-per-channel",
            "static-int8-minmax",
            "static-int8-entropy",
            "static+exclude-sensitive",
            "fp16",
        ),
        **FAST,  # type: ignore[arg-type]
    )
    events: list[tuple[str, str]] = []
    out = tmp_path / "digits-int8"
    outcome = optimize(
        digits_bundle,
        {"pixels": x_test},
        out,
        labels=y_test,
        calibration={"pixels": x_train[:128]},
        config=config,
        progress=lambda ev, cand, i, n: events.append((ev, cand.name)),
    )
    result = outcome.result
    assert not result.kept_original and result.chosen.within_budget
    assert "int8" in result.chosen.name
    static = next(c for c in result.candidates if c.name == "static-int8-minmax")
    assert static.status == "ok" and static.within_budget
    assert ("done", "original") in events and any(e == "skipped" for e, _ in events)
    fp16 = next(c for c in result.candidates if c.name == "fp16")
    assert fp16.status == "skipped" and "GPU/NPU" in fp16.reason
    # the bundle carries the recipe and the metrics, and reproduces its golden sample
    bundle = edgeinfer.Bundle.open(out)
    recipe = bundle.manifest.provenance["recipe"]
    assert recipe["candidate"] == result.chosen.name
    assert recipe["steps"][0]["pass"] == "graph"
    assert recipe["steps"][-1]["pass"] == "compact"
    metrics = bundle.manifest.metrics
    assert metrics["optimize"]["size_ratio"] <= 0.35
    assert metrics["accuracy"] >= metrics["optimize"]["baseline"] - 0.005
    assert bundle.version == 2 and bundle.manifest.provenance["source_sha256"]
    with edgeinfer.load(out) as model:
        assert bundle.check_golden(model) == []
    # the report sits next to the bundle
    report = report_dir_for(out)
    data = json.loads((report / "report.json").read_text())
    assert data["chosen"] == result.chosen.name
    assert {c["name"] for c in data["candidates"]} >= {"original", "graph", "fp16"}
    assert (report / "report.png").stat().st_size > 1000
    assert "| candidate |" in (report / "report.md").read_text()


def test_no_candidate_within_budget_keeps_the_original(
    digits_onnx: Path, digits: tuple, tmp_path: Path
) -> None:
    _, _, x_test, _ = digits
    config = SearchConfig(
        metric="max_abs_error",
        max_drop=0.0,
        candidates=("dynamic-int8",),
        **FAST,  # type: ignore[arg-type]
    )
    outcome = optimize(digits_onnx, {"pixels": x_test[:64]}, tmp_path / "out", config=config)
    assert outcome.result.kept_original
    assert "the one measured candidate (dynamic-int8) did not meet the budget" in (
        outcome.result.message
    )
    assert (
        outcome.bundle.manifest.model.sha256
        == edgeinfer.Bundle.open(digits_onnx).manifest.model.sha256
    )
    assert outcome.bundle.manifest.metrics["optimize"]["kept_original"] is True


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"eval_data": {"image": np.zeros((4, 1, 8, 8), np.float32)}},
            InputError,
            r"eval data: missing input\(s\) 'pixels'",
        ),
        (
            {"eval_data": np.zeros((4, 1, 8, 8), np.float64), "labels": np.arange(3)},
            InputError,
            "labels: 3 labels for 4",
        ),
        (
            {"calibration": {"pixels": np.zeros((4, 8, 8), np.float32)}},
            InputError,
            "calibration data: input 'pixels'.*rank 3",
        ),
        ({"eval_data": np.zeros((0, 1, 8, 8), np.float32)}, InputError, "empty"),
        ({"config": {"metric": "precision"}}, InputError, "unknown metric 'precision'"),
        ({"config": {"metric": "accuracy"}}, InputError, "needs labels"),
        ({"config": {"candidates": ("int4",)}}, InputError, "unknown candidate"),
        ({"config": {"objective": "energy"}}, InputError, "objective 'energy'"),
        ({"config": {"max_drop": "lots"}}, InputError, "max drop"),
        ({"config": {"output": "probs"}}, InputError, "output 'probs' not found"),
    ],
)
def test_bad_input_fails_before_any_work(
    digits_onnx: Path, tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    args = {"eval_data": np.zeros((4, 1, 8, 8), np.float32), **kwargs}
    with pytest.raises(error, match=match):
        cfg = args.pop("config", {"metric": "cosine"})
        config = SearchConfig(**{"metric": "cosine", **cfg})
        optimize(digits_onnx, args.pop("eval_data"), tmp_path / "out", config=config, **args)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_output_in_the_way(digits_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not empty"):
        optimize(
            digits_onnx,
            np.zeros((4, 1, 8, 8), np.float32),
            out,
            config=SearchConfig(metric="cosine"),
        )
    assert (out / "keep.txt").read_text() == "mine"


def _measured(name: str, size: int, ms: float, value: float = 0.99) -> Candidate:
    ev = Evaluation({"accuracy": value}, ms, ms, size)
    return Candidate(name, status="ok", evaluation=ev, within_budget=True, drop=0.0)


@pytest.mark.parametrize(
    ("objective", "chosen", "note"),
    [
        # 6% larger and 3x faster than the smallest: the faster one wins
        ("size", "static", "static is 6% larger than dynamic and 3.00x faster"),
        # 2% slower and 0.85x the size of the fastest: the smaller one wins
        ("latency", "static-small", "static-small is 2% slower than static and 0.85x its size"),
    ],
)
def test_within_a_small_margin_the_other_objective_decides(
    objective: str, chosen: str, note: str
) -> None:
    base = _measured("original", 4_000_000, 10.0)
    planned = [
        _measured("dynamic", 1_000_000, 9.0),
        _measured("static", 1_060_000, 3.0),
        _measured("static-small", 900_000, 3.06),
        _measured("graph", 3_900_000, 2.5, value=0.5),  # fastest but outside the budget
    ]
    planned[-1].within_budget = False
    if objective == "size":
        planned.pop(2)
    config = SearchConfig(metric="accuracy", objective=objective, final_rounds=0)  # type: ignore[arg-type]
    best, message, notes = choose(
        base,
        planned,
        parse_metric("accuracy"),
        Budget.parse(0.01),
        config,
        None,  # type: ignore[arg-type]
    )
    assert best.name == chosen and message.startswith(f"chose {chosen}:")
    assert len(notes) == 1 and notes[0].startswith(f"objective {objective}: {note}")


def test_the_original_within_the_margin_and_faster_is_kept() -> None:
    base = _measured("original", 1_000_000, 2.0)
    smaller = _measured("dynamic", 960_000, 6.0)  # 4% smaller, 3x slower
    config = SearchConfig(metric="accuracy", objective="size", final_rounds=0)
    best, message, notes = choose(
        base,
        [smaller],
        parse_metric("accuracy"),
        Budget.parse(0.01),
        config,
        None,  # type: ignore[arg-type]
    )
    assert best is base and notes == [message.removeprefix("keeping the original: ")]
    assert message.startswith("keeping the original: objective size: original is 4% larger")
    assert "sizes within 10% of the smallest count as equal" in message


@pytest.mark.parametrize("margin", [-0.1, 1.0])
def test_margins_are_fractions(margin: float) -> None:
    with pytest.raises(InputError, match="size_margin must be a fraction"):
        SearchConfig(metric="accuracy", size_margin=margin)


def test_conv_only_candidate_quantizes_only_the_compute_operators() -> None:
    from edgeinfer.optimize.plan import COMPUTE_OPS, plan

    calib = Dataset({"pixels": np.zeros((2, 1, 8, 8), np.float32)})
    config = SearchConfig(metric="accuracy", candidates=("static-int8-entropy-conv-only",))
    (cand,) = plan(config, calib, transformer=False)
    step = cand.recipe.steps[1] if cand.recipe else None
    assert step is not None and step.pass_name == "static_int8"
    assert step.config.method == "entropy" and step.config.op_types == COMPUTE_OPS
