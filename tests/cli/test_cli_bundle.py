"""``edgeinfer bundle verify`` checks the manifest against the model, not only hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeinfer.cli.main import main


def verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(["bundle", "verify", str(path)])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(info.value.code or 0), " ".join((captured.out + captured.err).split())


def test_hand_edited_labels_of_a_paddle_classifier(
    ppocr_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PP-OCR's angle classifier: output [?,2], labels 0 and 180 degrees."""
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n180\n")
    out = tmp_path / "cls"
    with pytest.raises(SystemExit) as info:
        main([
            "bundle", "create", str(ppocr_models / "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            "--out", str(out), "--name", "ppocr-cls", "--labels", str(labels),
        ])  # fmt: skip
        raise SystemExit(0)
    assert info.value.code == 0
    capsys.readouterr()
    code, text = verify(out, capsys)
    assert code == 0 and "signature matches the model" in text, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [None, 3, None, None]  # Paddle wrote [?,3,?,?]
    manifest["labels"] = ["0", "90", "180", "270"]
    manifest["inputs"][0]["shape"] = [None, 3, 48, 192]  # narrower than the model: fine
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, text = verify(out, capsys)
    assert code == 2 and "Traceback" not in text
    assert "4 labels, but the model's class output(s)" in text and "have 2 classes" in text, text


def test_unreadable_labels_file_is_one_line(
    mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([
            "bundle", "create", str(mlp_path), "--out", str(tmp_path / "b"), "--name", "m",
            "--labels", str(tmp_path / "missing [v2].txt"),
        ])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --labels ") and "missing [v2].txt" in err
    assert err.count("\n") == 1 and "Traceback" not in err
