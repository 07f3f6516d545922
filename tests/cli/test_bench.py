"""``edgeinfer bench`` times the shapes it says it timed, and never guesses a size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeinfer import InputError
from edgeinfer.cli._common import parse_dims
from edgeinfer.cli.main import build_app, main
from edgeinfer.runtime.bench import bench
from onnx_builders import make_pooled_classifier

runner = CliRunner()


def bench_json(*args: str) -> dict[str, object]:
    result = runner.invoke(build_app(), ["bench", *args, "--json", "--seconds", "0.1"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.fixture
def paddle_like(tmp_path: Path) -> Path:
    """Paddle's spelling: every unknown dim is '?'."""
    return make_pooled_classifier(tmp_path / "cls.onnx", [None, 3, "?", "?"])


def test_parse_dims_repeatable_and_comma_separated() -> None:
    assert parse_dims(["x.2=48,x.3=192", "sequence=128"]) == {
        "x.2": 48,
        "x.3": 192,
        "sequence": 128,
    }
    for bad in (["x.2"], ["x.2=0"], ["=4"], ["a=1,"]):
        with pytest.raises(InputError, match="expected NAME=SIZE"):
            parse_dims(bad)


def test_refuses_to_guess_unnamed_dims(
    paddle_like: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", str(paddle_like), "--seconds", "0.1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no size for dynamic dimension(s) x.2, x.3" in err
    assert "--dim x.2=N,x.3=N" in err and "--input FILE" in err


def test_shapes_timed_are_reported(paddle_like: Path) -> None:
    result = bench_json(str(paddle_like), "--dim", "x.2=48,x.3=192", "--batch", "2")
    assert result["inputs"] == [{"name": "x", "dtype": "float32", "shape": [2, 3, 48, 192]}]
    assert result["batch"] == 2
    again = bench_json(str(paddle_like), "--dim", "x.2=32", "--dim", "x.3=96")
    assert again["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 32, 96]}]


def test_real_inputs_give_the_shapes(paddle_like: Path, tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "img.npy", np.zeros((1, 3, 48, 320), np.float32))
    result = bench_json(str(paddle_like), "--input", str(tmp_path / "img.npy"))
    assert result["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 48, 320]}]


def test_symbols_are_sized_once_and_unknown_names_refused(two_input_path: Path) -> None:
    result = bench_json(str(two_input_path), "--dim", "seq=16")
    shapes = {s["name"]: s["shape"] for s in result["inputs"]}  # type: ignore[attr-defined]
    assert shapes == {"ids": [1, 16], "mask": [1, 16]}
    with pytest.raises(InputError, match=r"unknown dimension\(s\) 'sequence'; .* are batch, seq"):
        bench(two_input_path, dims={"sequence": 16}, min_seconds=0.1)
    with pytest.raises(InputError, match=r"no size for dynamic dimension\(s\) seq;"):
        bench(two_input_path, min_seconds=0.1)


def test_paddle_recognizer_needs_its_line_height_and_width(ppocr_models: Path) -> None:
    rec = ppocr_models / "ch_PP-OCRv4_rec_infer.onnx"
    with pytest.raises(InputError, match=r"x\.2, p2o\.DynamicDimension\.1;"):
        bench(rec, min_seconds=0.1)
    dims = parse_dims(["x.2=48,p2o.DynamicDimension.1=320"])
    result = bench(rec, dims=dims, warmup=1, min_calls=3, min_seconds=0.05)
    assert [s.describe() for s in result.inputs] == ["float32 [1,3,48,320]"]
