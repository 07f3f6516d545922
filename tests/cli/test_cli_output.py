"""What the command line prints at 80 columns into a file: whole errors, whole option
names, tables that fit, progress as it happens. Run as real processes with stdout and
stderr redirected, the way a CI log or ``> out.txt`` sees them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgeinfer.cli._common import status
from onnx_builders import make_pooled_classifier


def edgeinfer(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run ``edgeinfer ARGS`` with COLUMNS=80, stdout and stderr written to files."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        code = subprocess.run(
            [sys.executable, "-m", "edgeinfer.cli.main", *args],
            stdout=fo,
            stderr=fe,
            env=env,
            timeout=120,
            check=False,
        ).returncode
    return code, out.read_text(), err.read_text()


def widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


@pytest.fixture
def square_model(tmp_path: Path) -> Path:
    return make_pooled_classifier(tmp_path / "square.onnx", ["batch", 3, 64, 64])


@pytest.mark.timeout(120)
def test_errors_keep_bracketed_shapes(square_model: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((1, 30), np.float32))
    code, out, err = edgeinfer(tmp_path, "run", str(square_model), "-i", str(tmp_path / "bad.npy"))
    assert code == 2 and out == ""
    assert err.strip() == (
        "error: input 'x': expected float32 [batch,3,64,64], got float32 [1,30]: "
        "rank 2, expected rank 4"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("serve", ["--max-queue-delay-us", "--compress-min-bytes", "--switch-interval-ms"]),
        ("bench", ["--concurrency", "--dim"]),
        ("bundle create", ["--overwrite", "--golden"]),
    ],
)
def test_help_keeps_option_names_whole_at_80_columns(
    tmp_path: Path, command: str, options: list[str]
) -> None:
    code, out, _ = edgeinfer(tmp_path, *command.split(), "--help")
    assert code == 0
    assert widest(out) <= 80, out
    for option in options:
        assert f"  {option} " in out or f"  {option}\n" in out, (option, out)
    assert "…" not in out


@pytest.mark.timeout(120)
def test_inspect_and_bench_tables_fit_80_columns(tmp_path: Path) -> None:
    model = make_pooled_classifier(
        tmp_path / "m.onnx", ["batch", 3, "image_height_in_pixels", "image_width_in_pixels"]
    )
    code, out, err = edgeinfer(tmp_path, "inspect", str(model))
    assert code == 0, err
    assert widest(out) <= 80, out
    assert "[batch,3,image_height_in_pixels,image_width_in_pixels]" in "".join(
        line.strip("│ ") for line in out.splitlines()
    ).replace(" ", ""), out
    dims = "image_height_in_pixels=48,image_width_in_pixels=192"
    code, out, err = edgeinfer(tmp_path, "bench", str(model), "--seconds", "0.1", "--dim", dims)
    assert code == 0, err
    assert widest(out) <= 80, out
    lines = out.splitlines()
    assert lines[0].startswith("benchmarking m.onnx"), out  # progress first, table after
    assert any("input x" in ln and "float32 [1,3,48,192]" in ln for ln in lines), out


def test_progress_is_written_as_it_happens_when_not_a_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80)
    assert not console.is_terminal
    with status(console, "measuring [N,3,64,64] inputs...") as update:
        assert buffer.getvalue() == "measuring [N,3,64,64] inputs...\n"
        update("candidate [2/5] int8 done")
        assert buffer.getvalue().splitlines()[-1] == "candidate [2/5] int8 done"
