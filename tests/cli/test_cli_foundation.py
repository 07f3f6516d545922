"""The foundation commands, run in-process through the real typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app, main

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(build_app(), list(args))
    return result.exit_code, result.output


def test_inspect(mlp_path: Path) -> None:
    code, out = invoke("inspect", str(mlp_path), "--json")
    assert code == 0, out
    facts = json.loads(out)
    assert facts["format"] == "onnx" and facts["opset"] == "ai.onnx 17"
    assert facts["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert "CPUExecutionProvider" in facts["providers in use"]
    code, out = invoke("inspect", str(mlp_path))
    assert code == 0 and "signature" in out


def test_bundle_create_verify_pack_unpack_run(mlp_path: Path, tmp_path: Path) -> None:
    golden = tmp_path / "golden.npy"
    np.save(golden, np.ones((2, 4), np.float32))
    out = tmp_path / "b"
    code, text = invoke(
        "bundle", "create", str(mlp_path), "--out", str(out), "--name", "mlp",
        "--version", "2", "--golden", str(golden), "--metric", "accuracy=0.5",
    )  # fmt: skip
    assert code == 0, text
    code, text = invoke("bundle", "verify", str(out))
    assert code == 0 and "golden sample reproduced" in text
    code, text = invoke("bundle", "pack", str(out), str(tmp_path / "b.tar"))
    assert code == 0, text
    code, text = invoke("bundle", "unpack", str(tmp_path / "b.tar"), str(tmp_path / "c"))
    assert code == 0 and "mlp v2" in text
    inputs = tmp_path / "in.json"
    inputs.write_text(json.dumps({"x": [[1, 2, 3, 4]]}))
    code, text = invoke(
        "run", str(tmp_path / "c"), "--input", str(inputs), "--output", str(tmp_path / "o.npz")
    )
    assert code == 0, text
    with np.load(tmp_path / "o.npz") as z:
        assert z["logits"].shape == (1, 3)


def test_bench_json(mlp_path: Path) -> None:
    code, text = invoke("bench", str(mlp_path), "--json", "--seconds", "0.1", "--batch", "4")
    assert code == 0, text
    result = json.loads(text[text.index("{") :])
    assert result["batch"] == 4 and result["calls"] >= 50
    assert result["p50_ms"] <= result["p99_ms"]
    assert result["cold_start_s"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["run", "{model}", "--input", "{tmp}/missing.npy"], "input file not found"),
        (
            ["run", "{model}", "--input", "{tmp}/bad.json"],
            r"expected float32 \[N,4\], got int64 \[1,3\]",
        ),
        (["run", "{tmp}/nothing.onnx", "--input", "{tmp}/bad.json"], "no such bundle"),
        (["bench", "{model}", "--dim", "sequence"], "expected NAME=SIZE"),
        (["inspect", "{tmp}/bad.json"], "unsupported model file type '.json'"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    import re

    (tmp_path / "bad.json").write_text("[[1, 2, 3]]")
    argv = [a.format(model=mlp_path, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, " ".join(err.split())), err
