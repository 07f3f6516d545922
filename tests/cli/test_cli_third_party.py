"""run / bench / inspect / bundle create on third-party models as a newcomer runs them: a
multi-input model given one array, accelerators asked for where there are none, long names
and symbolic shapes in tables, slow calls and short --seconds."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeinfer.cli._common import preview
from onnx_builders import make_mlp, make_pooled_classifier


def edgeinfer(cwd: Path, *args: str) -> tuple[int, str, str]:
    """The CLI as a user runs it, output to pipes (not a terminal), 80 columns."""
    env = dict(os.environ, COLUMNS="80", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeinfer", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def silero() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("silero-vad is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


@pytest.fixture(scope="module")
def embedding_tflite() -> Path:
    """openWakeWord's speech embedding: output 'StatefulPartitionedCall:0', 96 floats."""
    pytest.importorskip("ai_edge_litert", reason="needs the 'litert' extra")
    spec = importlib.util.find_spec("wyoming_openwakeword")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("wyoming-openwakeword is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "embedding_model.tflite"
    if not path.is_file():
        pytest.skip(f"{path}: missing")
    return path


@pytest.mark.timeout(180)
def test_one_array_for_a_multi_input_model_names_the_cli_way(silero: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "audio.npy", np.zeros((1, 512), np.float32))
    expected = "pass a .npz (or .json) with arrays named input, state, sr"
    for args in (
        ["run", str(silero), "--input", "audio.npy"],
        ["bench", str(silero), "--input", "audio.npy", "--seconds", "0.01"],
        ["bundle", "create", str(silero), "-o", "b", "--name", "vad", "--golden", "audio.npy"],
    ):
        code, out, err = edgeinfer(tmp_path, *args)
        assert code == 2, (args, out, err)
        assert expected in err and "dict" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "b").exists()


@pytest.mark.timeout(120)
def test_bench_refuses_to_guess_the_sample_rate_quietly(silero: Path, tmp_path: Path) -> None:
    code, out, err = edgeinfer(tmp_path, "bench", str(silero), "--dim", "input.1=512,state.1=1")
    assert code == 2
    assert err.strip() == (
        "error: input 'sr' is an integer scalar whose valid values cannot be guessed; "
        "time real inputs with --input FILE (inputs= from Python)"
    )
    assert out.startswith("benchmarking silero_vad.onnx: at least 5 calls or 2 s")
    np.savez(
        tmp_path / "bad.npz",
        input=np.zeros((1, 512), np.float32),
        state=np.zeros((2, 1, 128), np.float32),
        sr=np.array(5, np.int64),
    )
    code, out, err = edgeinfer(tmp_path, "run", str(silero), "--input", "bad.npz")
    assert code == 2
    (line,) = err.strip().splitlines()  # no ONNX Runtime log lines before it
    assert line.startswith("error: ") and "LSTM node" in line and "\x1b[" not in err


@pytest.mark.timeout(120)
def test_fallback_flag_on_the_cli(embedding_tflite: Path, mlp_path: Path, tmp_path: Path) -> None:
    x = np.zeros((1, 76, 32, 1), np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = edgeinfer(
        tmp_path, "run", str(embedding_tflite), "-i", "x.npy", "--providers", "cuda"
    )
    assert code == 2 and "XNNPACK" in err and "--fallback" in err
    assert len(err.strip().splitlines()) == 1 or "INFO: Created TensorFlow Lite" in err
    code, out, err = edgeinfer(
        tmp_path, "run", str(embedding_tflite), "-i", "x.npy", "--providers", "cuda", "--fallback"
    )
    assert code == 0, err
    np.save(tmp_path / "m.npy", np.zeros((1, 4), np.float32))
    code, _, err = edgeinfer(tmp_path, "bench", str(mlp_path), "--providers", "cuda")
    assert code == 2 and "--fallback" in err
    code, out, err = edgeinfer(
        tmp_path, "bench", str(mlp_path), "--providers", "cuda", "--fallback", "--seconds", "0.01"
    )
    assert code == 0, err
    assert "CPUExecutionProvider" in out


@pytest.mark.timeout(120)
def test_run_table_keeps_names_whole_and_numbers_unbroken(
    embedding_tflite: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.standard_normal((1, 76, 32, 1)) * 100).astype(np.float32))
    code, out, err = edgeinfer(tmp_path, "run", str(embedding_tflite), "-i", "x.npy")
    assert code == 0, err
    assert "…" not in out
    cells = ["".join(line.split("│")[1].split()) for line in out.splitlines() if "│" in line]
    assert "StatefulPartitionedCall:0" in "".join(cells), out
    values = [line.split("│")[4].strip() for line in out.splitlines() if line.count("│") == 5]
    assert values[0].startswith("[") and not any(v.startswith(",") for v in values), out
    for v in " ".join(values).strip("[]").replace(", ...", "").split(", "):
        float(v)  # every value whole: a number is never cut across lines


def test_preview_is_short_fixed_precision_text() -> None:
    assert preview(np.array([1.0, 0.0, 2.5e-7, 123456.0], np.float32)) == (
        "[1, 0, 2.5e-07, 1.235e+05]"
    )
    assert preview(np.arange(10)) == "[0, 1, 2, 3, 4, 5, ...]"
    assert preview(np.array([True, False])) == "[True, False]"


@pytest.mark.timeout(120)
def test_inspect_shows_symbolic_expressions_as_a_question_mark(tmp_path: Path) -> None:
    expression = "(floor(floor(height/2 - 1/2)/2) + 1)*(floor(floor(width/2 - 1/2)/2) + 1)"
    model = make_pooled_classifier(tmp_path / "m.onnx", ["batch", 3, expression, "width"])
    code, out, err = edgeinfer(tmp_path, "inspect", str(model))
    assert code == 0, err
    assert "[batch, 3, ?, width]" in out and "floor" not in out
    assert "? : a long symbolic size" in out
    sha = next(line for line in out.splitlines() if line.startswith("sha256 "))
    assert len(sha.split()[1]) == 64  # whole, on its own line
    code, out, err = edgeinfer(tmp_path, "inspect", str(model), "--json")
    assert code == 0 and expression in out


@pytest.mark.timeout(120)
def test_inspect_lists_only_the_opset_domains_the_nodes_use(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    proto = onnx.load(str(model))
    for domain in ("ai.onnx.training", "ai.onnx.preview", "com.microsoft", "org.pytorch.aten"):
        proto.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.save(proto, str(model))
    code, out, err = edgeinfer(tmp_path, "inspect", str(model))
    assert code == 0, err
    (opset,) = [line for line in out.splitlines() if "opset" in line]
    assert "ai.onnx " in opset
    for unused in ("training", "preview", "com.microsoft", "aten"):
        assert unused not in opset, opset
    # a domain a node does use stays listed
    proto.graph.node.append(
        helper.make_node("Gelu", ["logits"], ["g"], domain="com.microsoft", name="gelu")
    )
    proto.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))
    onnx.save(proto, str(model))
    code, out, err = edgeinfer(tmp_path, "inspect", str(model))
    assert code == 0, err
    (opset,) = [line for line in out.splitlines() if "opset" in line]
    assert "com.microsoft 1" in opset and "training" not in opset


@pytest.mark.timeout(120)
def test_inspect_on_tflite_shows_litert_providers(embedding_tflite: Path, tmp_path: Path) -> None:
    code, out, err = edgeinfer(tmp_path, "inspect", str(embedding_tflite))
    assert code == 0, err
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.count("│") == 3
    }
    assert rows["backend"] == "litert"
    assert rows["providers available"] == "LiteRT CPU (XNNPACK)"
    assert "ExecutionProvider" not in out


@pytest.mark.timeout(120)
def test_help_shows_readable_argument_names(tmp_path: Path) -> None:
    for command, metavar in (
        (["run"], "MODEL"),
        (["bench"], "MODEL"),
        (["inspect"], "MODEL"),
        (["bundle", "verify"], "BUNDLE"),
        (["serve"], "[REPOSITORY]"),  # optional: in brackets
    ):
        code, out, _ = edgeinfer(tmp_path, *command, "--help")
        assert code == 0
        assert "{path}" not in out and "PATH" not in out.split("Options")[0], out
        assert metavar in out, (command, out)
    code, out, _ = edgeinfer(tmp_path, "serve", "--help")
    assert "--token-file" in out and not [ln for ln in out.splitlines() if ln.endswith("-")]
    code, out, _ = edgeinfer(tmp_path, "bench", "--help")
    assert "at least 5 calls" in " ".join(out.split())
    assert "--fallback" in out
