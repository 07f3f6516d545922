"""Metric parsing and computation, and the accuracy budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.errors import InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.metrics import compute, parse_metric, standard_metrics


@pytest.mark.parametrize(
    ("name", "canonical", "higher"),
    [
        ("accuracy", "accuracy", True),
        ("ACC", "accuracy", True),
        ("top-5", "top5", True),
        ("top1", "accuracy", True),
        ("f1", "f1", True),
        ("cos", "cosine", True),
        ("min-cosine", "min_cosine", True),
        ("mse", "mse", False),
        ("max_abs", "max_abs_error", False),
    ],
)
def test_parse_metric(name: str, canonical: str, higher: bool) -> None:
    metric = parse_metric(name)
    assert metric.name == canonical and metric.higher_is_better is higher


@pytest.mark.parametrize("name", ["precision", "top0", "", "topk"])
def test_unknown_metric(name: str) -> None:
    with pytest.raises(InputError, match="metric"):
        parse_metric(name)


def test_task_metrics() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.4, 0.5, 0.1]])
    labels = np.array([1, 0, 1, 0])
    assert compute(parse_metric("accuracy"), scores, labels=labels) == 0.5
    assert compute(parse_metric("top2"), scores, labels=labels) == 1.0
    f1 = compute(parse_metric("f1"), scores, labels=labels)
    assert 0.0 < f1 < 1.0
    # a classifier's integer label output counts as predictions
    assert compute(parse_metric("accuracy"), np.array([1, 0, 1, 1]), labels=labels) == 0.75
    y = np.array([1.0, 2.0])
    assert compute(parse_metric("mse"), np.array([[1.0], [4.0]]), labels=y) == 2.0
    assert compute(parse_metric("mae"), np.array([[1.0], [4.0]]), labels=y) == 1.0


def test_fidelity_metrics() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    out = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    assert compute(parse_metric("cosine"), out, reference=ref) == pytest.approx(2 / 3)
    assert compute(parse_metric("min_cosine"), out, reference=ref) == 0.0
    assert compute(parse_metric("agreement"), out, reference=ref) == pytest.approx(2 / 3)
    assert compute(parse_metric("max_abs_error"), out, reference=ref) == 2.0
    got = standard_metrics(parse_metric("accuracy"), out, labels=np.array([0, 1, 0]), reference=ref)
    assert set(got) >= {"accuracy", "f1", "cosine", "min_cosine", "max_abs_error", "agreement"}


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("accuracy", {}, "needs labels"),
        ("accuracy", {"labels": np.array([0.5, 0.5])}, "integer class label"),
        ("cosine", {}, "compares with the original"),
        ("top5", {"labels": np.array([0, 1])}, "only 2 scores"),
        ("mse", {"labels": np.array([1.0, 2.0, 3.0])}, "do not match"),
    ],
)
def test_metric_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        compute(parse_metric(name), np.ones((2, 2)), **kwargs)


def test_budget() -> None:
    acc, mse = parse_metric("accuracy"), parse_metric("mse")
    absolute = Budget.parse("0.01")
    assert absolute.within(acc, 0.98, 0.97) and not absolute.within(acc, 0.98, 0.969)
    relative = Budget.parse("1%")
    assert relative.relative and relative.allowed(0.5) == pytest.approx(0.005)
    assert relative.within(acc, 0.5, 0.496) and not relative.within(acc, 0.5, 0.49)
    assert absolute.within(mse, 0.10, 0.105) and not absolute.within(mse, 0.10, 0.2)
    assert absolute.drop(acc, 0.9, 0.95) < 0  # better than the original
    for bad in ("a lot", "-1", "x%"):
        with pytest.raises(InputError, match="max drop"):
            Budget.parse(bad)
