"""Evaluation through edgeinfer.Model, side-by-side timing, peak memory, recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeinfer.errors import InputError
from edgeinfer.optimize import Recipe, Step, compare_latency, evaluate, load_dataset
from edgeinfer.optimize.data import model_specs
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.passes.compact import CompactConfig
from edgeinfer.optimize.passes.dynamic_int8 import DynamicInt8Config
from edgeinfer.optimize.passes.graph import GraphConfig
from edgeinfer.optimize.recipe import apply


def test_evaluate_reports_metrics_latency_size_memory(digits_onnx: Path, digits: tuple) -> None:
    _, _, x, y = digits
    data = load_dataset({"pixels": x[:100]}, model_specs(digits_onnx), labels=y[:100])
    ev, outputs = evaluate(
        digits_onnx, data, parse_metric("accuracy"), repeats=5, memory=True, self_reference=True
    )
    assert outputs.shape == (100, 10)
    assert ev.metrics["accuracy"] > 0.9 and ev.metrics["cosine"] == pytest.approx(1.0)
    assert ev.latency_ms > 0 and ev.latency_p90_ms >= ev.latency_ms
    assert ev.size_bytes == digits_onnx.stat().st_size
    assert ev.memory_bytes is not None and ev.memory_bytes > 0
    assert ev.to_dict()["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="output 'probs' not found"):
        evaluate(digits_onnx, data, parse_metric("accuracy"), output="probs", repeats=1)


def test_compare_latency_times_every_model(digits_onnx: Path, mlp_path: Path) -> None:
    (a,) = compare_latency([digits_onnx], {"pixels": np.zeros((1, 1, 8, 8), np.float32)}, rounds=3)
    assert a > 0
    both = compare_latency([mlp_path, mlp_path], {"x": np.zeros((1, 4), np.float32)}, rounds=3)
    assert len(both) == 2 and all(t > 0 for t in both)


def test_recipes_share_their_prefix(digits_onnx: Path, tmp_path: Path) -> None:
    graph = Step("graph", GraphConfig())
    first = Recipe("a", (graph, Step("dynamic_int8", DynamicInt8Config())))
    second = Recipe("b", (graph, Step("compact", CompactConfig())))
    cache: dict = {}
    a = apply(first, digits_onnx, tmp_path, cache)
    b = apply(second, digits_onnx, tmp_path, cache)
    assert len(cache) == 3  # the graph step ran once
    assert a.path != b.path and len(a.infos) == len(b.infos) == 2
    steps = first.to_dict()["steps"]
    assert steps[0]["pass"] == "graph" and steps[1]["per_channel"] is False


@pytest.mark.slow
def test_demo_stage_prints_the_candidate_table(tmp_path: Path) -> None:
    from rich.console import Console

    from edgeinfer.demo import run_demo

    console = Console(record=True, width=200)
    ctx = run_demo(tmp_path, stages=["foundation", "optimize"], console=console, fast=True)
    text = console.export_text()
    assert "digits CNN: candidates" in text and "in budget" in text
    assert (ctx.artifacts["digits_int8_bundle"] / "manifest.json").is_file()
