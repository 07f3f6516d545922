"""``edgeinfer split`` through the real typer app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app, main
from edgeinfer.split import SplitProfile

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(build_app(), list(args))
    return result.exit_code, result.output


def test_split_writes_heads_tails_and_profile(res_cnn: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = invoke(
        "split", str(res_cnn), "--out", str(out), "--max-cuts", "3", "--repeats", "2"
    )
    assert code == 0, text
    profile = SplitProfile.load(out / "split.json")
    assert [c.kind for c in profile.cuts] == ["remote", "split", "local"]
    mid = profile.cuts[1].index
    assert (out / "heads" / f"res_cnn-head-{mid}" / "manifest.json").is_file()
    assert (out / "tails" / f"res_cnn-tail-{mid}" / "1" / "manifest.json").is_file()
    assert (out / "tails" / "res_cnn-tail-0" / "1" / "model.onnx").is_file()
    assert not (out / "heads" / "res_cnn-head-0").exists()
    assert "per-cut profile" in text


def test_split_one_cut_compressed(res_cnn: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    code, text = invoke(
        "split", str(res_cnn), "--out", str(out), "--cut", "2", "--compress", "fp16",
        "--compress-outputs", "uint8", "--repeats", "1",
    )  # fmt: skip
    assert code == 0, text
    profile = SplitProfile.load(out / "split.json")
    assert [c.index for c in profile.cuts][:2] == [0, 2] and profile.compress == "fp16"
    assert profile.compress_outputs == "uint8" and "output compression uint8" in text
    assert [c.kind for c in profile.cuts] == ["remote", "split", "local"]


def test_split_list(res_cnn: Path) -> None:
    code, text = invoke("split", str(res_cnn), "--list")
    assert code == 0 and "cut points" in text and "remote" in text and "local" in text


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--out", "{tmp}", "--cut", "99"], r"--cut 99 is out of range: res_cnn has \d+ cuts"),
        (["--out", "{tmp}", "--compress", "int4"], "--compress 'int4': expected one of"),
        (["--out", "{tmp}", "--compress-outputs", "x"], "--compress-outputs 'x': expected one"),
        ([], "--out DIR is required"),
        (["--list", "--max-tensors", "0"], "max_tensors must be >= 1"),
    ],
)
def test_split_errors(
    res_cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["split", str(res_cnn), *(a.format(tmp=tmp_path) for a in args)])
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and re.search(match, err), err


def test_split_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(SystemExit) as info:
        main(["split", str(bad), "--list"])
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err
