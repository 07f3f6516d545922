"""``edgeinfer optimize`` and ``edgeinfer distill`` through the real command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app, main


@pytest.fixture(scope="module")
def files(digits: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    x_train, _, x_test, y_test = digits
    root = tmp_path_factory.mktemp("cli-data")
    np.savez(root / "eval.npz", pixels=x_test[:200], labels=y_test[:200])
    np.savez(root / "calib.npz", pixels=x_train[:64])
    np.savez(root / "train.npz", pixels=x_train)
    np.savez(root / "wrong.npz", pixels=x_test[:10, 0])
    return {p.stem: p for p in root.iterdir()}


@pytest.mark.slow
def test_optimize_command(digits_bundle: Path, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        build_app(),
        [
            "optimize",
            str(digits_bundle),
            "--eval",
            str(files["eval"]),
            "--calibration",
            str(files["calib"]),
            "--metric",
            "accuracy",
            "--max-drop",
            "1%",
            "--objective",
            "size",
            "--out",
            str(out),
            "--no-memory",
            "--repeats",
            "5",
            "--candidates",
            "dynamic-int8-per-channel,static-int8-minmax",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    for column in ("candidate", "size", "latency", "speed", "accuracy", "in budget"):
        assert column in result.output
    assert "static-int8-minmax" in result.output and "chose" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["recipe"]["candidate"] in {
        "dynamic-int8-per-channel",
        "static-int8-minmax",
    }


def test_optimize_command_bad_input_is_one_line(
    digits_bundle: Path, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "optimize",
                str(digits_bundle),
                "--eval",
                str(files["wrong"]),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "eval data: input 'pixels'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_distill_command(digits_bundle: Path, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "student"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        build_app(),
        [
            "distill",
            str(digits_bundle),
            "--data",
            str(files["train"]),
            "--eval",
            str(files["eval"]),
            "--student",
            "mlp:64",
            "--epochs",
            "20",
            "--out",
            str(out),
            "--max-drop",
            "0.05",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "student" in result.output and "teacher" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["name"] == "pixels"
    assert "distill" in manifest["metrics"]


@pytest.mark.slow
def test_optimize_table_reads_at_80_columns(
    digits_bundle: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    """COLUMNS=80 (a narrow terminal, or output redirected to a file): nothing is cut."""
    out = tmp_path / "int8"
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        build_app(),
        [
            "optimize",
            str(digits_bundle),
            "--eval",
            str(files["eval"]),
            "--max-drop",
            "0.0",
            "--metric",
            "max_abs_error",
            "--out",
            str(out),
            "--no-memory",
            "--repeats",
            "3",
            "--candidates",
            "dynamic-int8-per-channel,dynamic-int8-per-channel-unfused,static-int8-minmax,fp16",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    paths = ("bundle: ", "report: ")  # printed whole, for copying; the terminal wraps them
    assert max(len(line) for line in lines if not line.startswith(paths)) <= 80
    start = next(i for i, line in enumerate(lines) if line.startswith("candidate "))
    table = "\n".join(lines[start : start + 12])
    # whole names (long ones broken at a dash), sizes with units, no cut cells
    names = [line.split(" ")[0] for line in lines[start:]]
    assert "dynamic-int8-per-channel" in names and "-unfused" in names
    assert "…" not in result.output and "kB" in table
    assert "metric" in lines[start]  # "max_abs_error" is too wide a header; the title names it
    # every reason in full, below the table, as numbered notes
    text = " ".join(result.output.split())
    assert re.search(
        r"\[\d\] dynamic-int8-per-channel-unfused \(skip\): no transformer fusion to leave out",
        text,
    )
    assert "report.md, report.json" in text  # paths are never broken by the wrapping
    assert "static-int8-minmax (skip): no calibration data (give --calibration)" in text
    assert (
        "fp16 (skip): no GPU/NPU execution provider here; ONNX Runtime's CPU provider runs" in text
    )
    assert "the one measured candidate (dynamic-int8-per-channel) did not meet the budget" in text
