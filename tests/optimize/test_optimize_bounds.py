"""Third-party models in ``optimize``: bounded calibration memory, per-tensor retry,
rank-0 inputs, progress off a terminal, the candidate names the table shows, and a
speed-up that must beat timing noise."""

from __future__ import annotations

import glob
import json
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app, main
from edgeinfer.errors import InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate
from edgeinfer.optimize.data import load_dataset, model_specs
from edgeinfer.optimize.evaluate import Evaluation
from edgeinfer.optimize.metrics import parse_metric
from edgeinfer.optimize.passes.static_int8 import (
    StaticInt8Config,
    calibrate,
    chunk_samples,
)
from edgeinfer.optimize.plan import SearchConfig, plan
from edgeinfer.optimize.recipe import apply
from edgeinfer.optimize.search import choose, search

SITE = Path(sysconfig.get_paths()["purelib"])


def test_chunk_samples_fit_the_memory_budget() -> None:
    cfg = StaticInt8Config(calibration={"x": np.zeros((1, 1))}, memory_mb=256)
    assert chunk_samples(100_000_000, cfg, histogram=False) == 2
    assert chunk_samples(100_000_000, cfg, histogram=True) == 1  # histograms copy once more
    assert chunk_samples(1_000, cfg, histogram=False) == 256_000
    assert chunk_samples(10**12, cfg, histogram=False) == 1


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibration_in_chunks_matches_one_pass(
    digits_onnx: Path, digits: tuple, tmp_path: Path, method: str
) -> None:
    x = digits[0][:12]  # one whole batch of 8 and a short one of 4
    whole = StaticInt8Config(calibration={"pixels": x}, method=method)  # type: ignore[arg-type]
    small = StaticInt8Config(
        calibration={"pixels": x},
        method=method,  # type: ignore[arg-type]
        memory_mb=1e-9,  # one sample at a time
    )
    one = calibrate(digits_onnx, whole, tmp_path / "whole.json")
    many = calibrate(digits_onnx, small, tmp_path / "small.json")
    assert (one.samples, one.chunk) == (12, 12) and one.note() == ""
    assert (many.samples, many.chunk) == (12, 1)
    assert "at most 1 sample(s)' activations at a time to bound memory" in many.note()
    a = json.loads((tmp_path / "whole.json").read_text())["data"]
    b = json.loads((tmp_path / "small.json").read_text())["data"]
    assert a.keys() == b.keys() and a
    if method == "minmax":  # min/max merge exactly
        for key, value in a.items():
            for end in ("lowest", "highest"):
                assert np.allclose(value[end]["data"], b[key][end]["data"])


def _magika() -> Path:
    found = sorted(glob.glob(str(SITE / "magika" / "models" / "*" / "model.onnx")))
    if not found:
        pytest.skip("the magika package is not installed")
    return Path(found[0])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_per_channel_failure_retries_per_tensor(tmp_path: Path) -> None:
    # magika, graph-optimized: ONNX Runtime's per-channel bias-scale adjustment fails on it
    # ("truth value of an array ... is ambiguous"); per-tensor weights quantize fine.
    model = _magika()
    spec = model_specs(model)[0]
    shape = [4 if not isinstance(d, int) else d for d in spec.shape or ()]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=shape).astype(spec.dtype)
    config = SearchConfig(metric="cosine", candidates=("static-int8-minmax",))
    recipe = plan(config, load_dataset({spec.name: x}, (spec,)), transformer=False)[0].recipe
    assert recipe is not None
    applied = apply(recipe, model, tmp_path, {})
    info = next(i for i in applied.infos if "calibration_samples" in i)
    assert str(info["per_channel"]).startswith("off: ONNX Runtime's per-channel")
    assert info["note"] == "per-tensor weights: ONNX Runtime's per-channel quantizer failed here"
    assert info["quantized_ops"]


def _scalar_model(path: Path) -> Path:
    """y = x * gain: x float32 [N, 4], gain a rank-0 float32 input."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "gain"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_rank0_inputs_go_with_every_sample(tmp_path: Path) -> None:
    model = _scalar_model(tmp_path / "m.onnx")
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    data = load_dataset({"x": x, "gain": np.float32(2.0)}, model_specs(model))
    assert len(data) == 6 and data.scalars["gain"].ndim == 0
    batches = list(data.batches(4))
    assert [b["x"].shape[0] for b in batches] == [4, 2]
    assert all(float(b["gain"]) == 2.0 for b in batches)
    assert set(data.head(3).sample(1)) == {"x", "gain"}
    config = SearchConfig(metric="cosine", candidates=("graph",), memory=False, repeats=2)
    result = search(model, data, tmp_path / "work", config)
    assert result.baseline.evaluation is not None
    assert result.baseline.evaluation.metrics["cosine"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="only scalar inputs given"):
        load_dataset({"gain": np.float32(2.0)}, model_specs(model))


def test_state_with_batch_on_a_later_axis_is_refused_in_one_line() -> None:
    found = sorted(glob.glob(str(SITE / "silero_vad" / "data" / "silero_vad_16k_op15.onnx")))
    if not found:
        pytest.skip("the silero_vad package is not installed")
    feeds = {
        "input": np.zeros((4, 512), np.float32),
        "state": np.zeros((2, 4, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }
    with pytest.raises(InputError, match=r"'state' .* batch on a later axis") as err:
        load_dataset(feeds, model_specs(found[0]))
    assert "\n" not in str(err.value)
    feeds["state"] = np.zeros((4, 2, 128), np.float32)  # samples first: still no fit
    with pytest.raises(InputError, match=r"'state' .* batch on a later axis"):
        load_dataset(feeds, model_specs(found[0]))


def test_candidate_names_the_table_shows_are_accepted() -> None:
    names = ("static-int8-minmax+exclude-sensitive", "dynamic-int8+exclude-sensitive")
    config = SearchConfig(metric="cosine", candidates=names)
    planned = plan(config, None, transformer=False)
    assert [c.recipe is None for c in planned] == [True, True, False, True]
    assert [c.name for c in planned] == [
        "static-int8-minmax",
        "static-int8-minmax+exclude-sensitive",
        "dynamic-int8",
        "dynamic-int8+exclude-sensitive",
    ]
    SearchConfig(candidates=("static+exclude-sensitive", "dynamic+exclude-sensitive"))
    with pytest.raises(InputError, match="static-int8-minmax\\+exclude-sensitive"):
        SearchConfig(candidates=("static-int8-kl+exclude-sensitive",))
    help_text = CliRunner(env={"COLUMNS": "300"}).invoke(build_app(), ["optimize", "--help"])
    assert "static-int8-entropy+exclude-sensitive" in " ".join(help_text.output.split())


def _measured(name: str, ms: float, size: int) -> Candidate:
    ev = Evaluation(metrics={"cosine": 1.0}, latency_ms=ms, latency_p90_ms=ms, size_bytes=size)
    return Candidate(name, status="ok", evaluation=ev, within_budget=True, drop=0.0)


@pytest.mark.parametrize(
    ("ms", "size", "chosen"),
    [(97.0, 1000, "original"), (60.0, 1000, "graph"), (99.0, 300, "graph")],
)
def test_a_speed_up_within_the_noise_margin_keeps_the_original(
    ms: float, size: int, chosen: str
) -> None:
    config = SearchConfig(metric="cosine", final_rounds=0, min_speedup=0.05)
    base, cand = _measured("original", 100.0, 1000), _measured("graph", ms, size)
    metric, budget = parse_metric("cosine"), Budget.parse(0.01)
    picked, message, notes = choose(base, [cand], metric, budget, config, None)  # type: ignore[arg-type]
    assert picked.name == chosen
    if ms > 95.0:
        assert any("within the 5% noise margin" in n for n in notes)
    if chosen == "original":
        assert "no candidate within budget is faster than the original" in message


def test_nothing_measured_reads_naturally() -> None:
    config = SearchConfig(metric="cosine", final_rounds=0)
    base = _measured("original", 1.0, 10)
    skipped = Candidate("graph", status="failed", reason="broken")
    metric, budget = parse_metric("cosine"), Budget.parse(0.01)
    _, message, _ = choose(base, [skipped], metric, budget, config, None)  # type: ignore[arg-type]
    assert message.startswith("no candidate could be measured")
    one = _measured("graph", 1.0, 10)
    one.within_budget = False
    _, message, _ = choose(base, [one], metric, budget, config, None)  # type: ignore[arg-type]
    assert "the one measured candidate (graph) did not meet the budget" in message


@pytest.mark.timeout(300)
def test_progress_off_a_terminal_is_one_line_per_candidate(
    digits_bundle: Path, digits: tuple, tmp_path: Path
) -> None:
    np.savez(tmp_path / "eval.npz", pixels=digits[2][:16])
    result = CliRunner().invoke(
        build_app(),
        [
            "optimize",
            str(digits_bundle),
            "--eval",
            str(tmp_path / "eval.npz"),
            "--candidates",
            "graph",
            "--repeats",
            "2",
            "--no-memory",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "[1/1] graph: building" in lines
    assert any(line.startswith("[1/1] graph: ok (") and line.endswith(" s)") for line in lines)
    assert lines.index("[1/1] graph: building") < lines.index("original: measuring") + 3


def test_an_input_error_is_not_preceded_by_an_empty_line(
    digits_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # as on a terminal, where the bars would draw
    np.savez(tmp_path / "bad.npz", pixels=np.float32(1.0))
    args = ["optimize", str(digits_bundle), "--eval", str(tmp_path / "bad.npz")]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "input 'pixels' is a scalar" in captured.err


@pytest.mark.timeout(300)
def test_a_named_sensitive_variant_starts_from_that_candidate(
    digits_onnx: Path, digits: tuple, tmp_path: Path
) -> None:
    data = load_dataset({"pixels": digits[2][:32]}, model_specs(digits_onnx))
    config = SearchConfig(
        metric="cosine",
        max_drop="50%",
        candidates=("dynamic-int8+exclude-sensitive",),
        memory=False,
        repeats=2,
        final_rounds=2,
        sensitivity_samples=8,
    )
    result = search(digits_onnx, data, tmp_path, config)
    names = [(c.name, c.status) for c in result.candidates]
    assert names == [("dynamic-int8", "ok"), ("dynamic-int8+exclude-sensitive", "ok")]
    recipe = result.candidates[1].recipe
    assert recipe is not None and "sensitivity" in [s.pass_name for s in recipe.steps]
