"""``edgeinfer optimize`` on a generative bundle: weight-only quantization of the tiny Llama
(edgeinfer.demo._tiny_lm), gated by perplexity and next-token agreement on held-out text."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
from typer.testing import CliRunner

from edgeinfer.bundle import Bundle
from edgeinfer.cli.main import build_app, main
from edgeinfer.demo._tiny_lm import TEXT
from edgeinfer.errors import InputError
from edgeinfer.generate import load
from edgeinfer.generate.quality import HELDOUT_TEXT, read_text, score, token_ids
from edgeinfer.optimize.generative import GenerativeConfig
from edgeinfer.optimize.generative_pipeline import OptimizeResult, optimize_generative
from edgeinfer.optimize.weight_only import ALL_CANDIDATES, DEFAULT_CANDIDATES, parse

FAST = {"rounds": 1, "decode_tokens": 8, "prompt_tokens": 8, "threads": 1}
CANDIDATES = ("int4-rtn-b32-acc4-head-int8", "int8-b32-acc4-head-fp32")


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Text of the kind the tiny model was trained on (it knows no other English)."""
    path = tmp_path_factory.mktemp("gen-eval") / "eval.txt"
    path.write_text(TEXT[:1500], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def searched(
    tiny_bundle: Bundle, eval_text: Path, tmp_path_factory: pytest.TempPathFactory
) -> OptimizeResult:
    out = tmp_path_factory.mktemp("gen-opt") / "tiny-int4"
    # objective size: on a model this small, decode time is noise on a shared machine
    config = GenerativeConfig(candidates=CANDIDATES, objective="size", **FAST)  # type: ignore[arg-type]
    return optimize_generative(tiny_bundle.path, out, eval_text=eval_text, config=config)


@pytest.mark.slow  # the module's search runs in its first test's setup
def test_search_measures_each_candidate_and_bundles_the_chosen(searched: OptimizeResult) -> None:
    result = searched.result
    assert [c.name for c in result.candidates] == list(CANDIDATES)
    base = result.baseline.evaluation
    assert base is not None and base.metrics["agreement"] == 1.0
    for cand in result.candidates:
        assert cand.status == "ok", cand.reason
        ev = cand.evaluation
        assert ev is not None and ev.size_bytes < base.size_bytes
        assert ev.latency_ms > 0 and 0.0 <= ev.metrics["agreement"] <= 1.0
        # the gate: within budget exactly when both conditions hold
        allowed = 0.03 * base.metrics["perplexity"] + 1e-9
        ok = ev.metrics["perplexity"] - base.metrics["perplexity"] <= allowed
        assert cand.within_budget == (ok and ev.metrics["agreement"] >= 0.9)
    assert not result.kept_original and result.chosen.within_budget
    manifest = json.loads((searched.bundle.path / "manifest.json").read_text())
    assert manifest["kind"] == "generative"
    assert manifest["provenance"]["recipe"]["candidate"] == result.chosen.name
    assert manifest["metrics"]["optimize"]["min_agreement"] == 0.9
    model = onnx.load(str(searched.bundle.path / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulNBits" in ops
    assert ("MatMul" in ops) == result.chosen.name.endswith("head-fp32")  # the LM head
    if result.chosen.name.startswith("int4"):  # the embedding follows a quantized head
        assert "GatherBlockQuantized" in ops
    report = searched.report_dir
    assert report is not None and (report / "report.png").stat().st_size > 0
    md = (report / "report.md").read_text()
    assert "perplexity" in md and result.chosen.name in md and "per decoded token" in md


def test_output_bundle_loads_and_generates(searched: OptimizeResult) -> None:
    bundle = Bundle.open(searched.bundle.path)
    with load(bundle.path, threads=1) as model:
        assert bundle.check_golden(model) == []
        out = model.generate("the quick brown", max_tokens=6)
    assert len(out.token_ids) == 6 and out.text


def test_gate_refuses_a_candidate_past_the_budget(
    tiny_bundle: Bundle, eval_text: Path, tmp_path: Path
) -> None:
    """Through the command line: a budget no quantized model meets keeps the float one."""
    out = tmp_path / "kept"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        build_app(),
        [
            "optimize", str(tiny_bundle.path), "--eval", str(eval_text), "--out", str(out),
            "--candidates", "int4-rtn-b128-acc4-head-int4", "--max-drop", "0%",
            "--min-agreement", "1.0", "--threads", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "none of the 1 measured candidates met the budget" in text
    assert re.search(r"int4-rtn-b128-acc4-head-int4 \(no\): (perplexity drop|next-token)", text)
    report = json.loads((tmp_path / "kept-report" / "report.json").read_text())
    (cand,) = (c for c in report["candidates"] if c["name"] != "original")
    assert cand["status"] == "ok" and cand["within_budget"] is False
    recipe = json.loads((out / "manifest.json").read_text())["provenance"]["recipe"]
    assert recipe["candidate"] == "original" and recipe["precision"] == "fp32"


def test_float_perplexity_equals_a_direct_computation(tiny_dir: Path) -> None:
    """The windowed scorer (plain ONNX Runtime, every position at once) against
    onnxruntime-genai fed one token at a time through its KV cache."""
    ids = token_ids(tiny_dir, TEXT[:400])[:60]
    quality = score(tiny_dir, ids, window=64, threads=1)
    assert quality.tokens == len(ids) - 1
    model = og.Model(str(tiny_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids))
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids[:1], np.int32))
    nll = []
    for token in ids[1:]:
        logits = np.asarray(gen.get_logits(), np.float64).reshape(-1)
        logz = logits.max() + math.log(np.exp(logits - logits.max()).sum())
        nll.append(logz - logits[token])
        gen.append_tokens(np.asarray([token], np.int32))
    assert quality.perplexity == pytest.approx(math.exp(float(np.mean(nll))), rel=1e-4)
    again = score(tiny_dir, ids, window=64, threads=1, reference=quality.predictions)
    assert again.agreement == 1.0


def test_candidate_names() -> None:
    assert set(DEFAULT_CANDIDATES) <= set(ALL_CANDIDATES)
    for name in ALL_CANDIDATES:
        assert parse(name).name == name
    spec = parse("int4-hqq-b64-acc0-head-fp32")
    assert (spec.bits, spec.method, spec.block_size, spec.accuracy_level, spec.head) == (
        4,
        "hqq",
        64,
        0,
        "fp32",
    )
    for bad in ("int4-rtn-b48-acc4-head-int8", "int8-b32-acc4-head-int4", "int3-rtn"):
        with pytest.raises(InputError, match="candidate"):
            parse(bad)


def test_read_text(tmp_path: Path) -> None:
    assert read_text(None) == HELDOUT_TEXT and len(HELDOUT_TEXT) > 3000
    with pytest.raises(InputError, match="no such eval text file"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_text(tmp_path / "empty.txt")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--metric", "cosine"], "metric 'cosine' does not apply to a generative model"),
        (["--candidates", "int4-gptq-b32-acc4-head-int8"], "unknown generative candidate"),
        (["--labels", "x.npy"], "--labels do not apply to a generative bundle"),
    ],
)
def test_cli_bad_input_is_one_line(
    tiny_bundle: Bundle,
    eval_text: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    args = ["optimize", str(tiny_bundle.path), "--eval", str(eval_text)]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "o"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "o").exists()


def test_cli_missing_eval_text_is_one_line(
    tiny_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "optimize",
                str(tiny_bundle.path),
                "--eval",
                str(missing),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such eval text file" in err
