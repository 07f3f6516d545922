"""``edgeinfer split`` as a first-time user drives it on models other people exported:
PP-OCR's detector (Paddle, opset 12, named ``p2o.DynamicDimension.N`` axes), silero-vad's
16 kHz detector (long tensor names, several crossing most cuts) and openWakeWord's
TFLite models.

Every dynamic axis answers to ``INPUT.AXIS`` as in ``bench``; compression upgrades an old
opset and says so; a failed ``--out`` leaves nothing behind; a TFLite file is named as
one; and the cut list shows which tensors cross at 80 columns.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_split_thirdparty import DET, cli_error, invoke, photo

from edgeinfer.bundle import Bundle
from edgeinfer.errors import BundleError, InputError
from edgeinfer.split import SplitProfile, cut_points, write_split
from edgeinfer.split._inputs import canonical_dims
from edgeinfer.split.graph import load_model

DET_DIMS = {"p2o.DynamicDimension.1": 96, "p2o.DynamicDimension.2": 128}


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


# ---------------------------------------------------------------- --dim INPUT.AXIS
def test_input_axis_sizes_a_named_axis(
    ppocr_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ppocr_models / DET
    model = load_model(path, weights=False)
    assert canonical_dims(model, {"x.2": 96, "x.3": 128}) == DET_DIMS
    assert canonical_dims(model, {"x.2": 96, "p2o.DynamicDimension.2": 128}) == DET_DIMS
    # the CLI lists the same cuts, however the axes are spelled
    code, by_axis = invoke("split", str(path), "--list", "--dim", "x.2=96,x.3=128")
    assert code == 0, by_axis
    code, by_symbol = invoke(
        "split", str(path), "--list", "--dim", "p2o.DynamicDimension.1=96",
        "--dim", "p2o.DynamicDimension.2=128",
    )  # fmt: skip
    assert code == 0 and by_axis == by_symbol, by_symbol
    assert by_axis.startswith("ch_PP-OCRv4_det_infer: 256 cut points") and " split " in by_axis
    # one axis, two sizes
    err = cli_error(
        ["split", str(path), "--list", "--dim", "x.2=96,p2o.DynamicDimension.1=32"], capsys
    )
    assert "'p2o.DynamicDimension.1' is sized twice, x.2=96 and p2o.DynamicDimension.1=32" in err
    # the batch is not a dimension to size; an unknown name lists both spellings
    err = cli_error(["split", str(path), "--list", "--dim", "x.0=4,x.2=96,x.3=128"], capsys)
    assert "'x.0' is the batch axis" in err
    err = cli_error(["split", str(path), "--list", "--dim", "x.2=96,x.3=128,x.5=1"], capsys)
    assert "unknown dimension(s) 'x.5'" in err
    assert "'p2o.DynamicDimension.1' (x.2), 'p2o.DynamicDimension.2' (x.3)" in err


@pytest.mark.slow
def test_input_axis_checked_against_real_inputs(
    ppocr_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(ppocr_models / DET)
    inputs = tmp_path / "x.npy"
    np.save(inputs, photo(96, 128))
    code, text = invoke("split", path, "--list", "-i", str(inputs), "--dim", "x.3=128")
    assert code == 0, text
    err = cli_error(["split", path, "--list", "-i", str(inputs), "--dim", "x.3=64"], capsys)
    assert "--dim x.3=64 disagrees with" in err
    assert "where x.3 (p2o.DynamicDimension.2) is 128" in err


# ---------------------------------------------------------------- compression, old opset
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compression_upgrades_an_opset_12_model(ppocr_models: Path, tmp_path: Path) -> None:
    path = ppocr_models / DET
    assert onnx.load(path, load_external_data=False).opset_import[0].version == 12
    out = tmp_path / "out"
    code, text = invoke(
        "split", str(path), "--out", str(out), "--cut", "40", "--dim", "x.2=96,x.3=128",
        "--compress", "uint8", "--compress-outputs", "fp16", "--repeats", "1",
    )  # fmt: skip
    assert code == 0, text
    said = [line for line in text.splitlines() if "opset" in line]
    assert said == [
        "ch_PP-OCRv4_det_infer: upgraded ONNX opset 12 -> 13 for cut and output compression; "
        "the upgraded model matches the original on the profiling inputs (max error 0)"
    ], text
    profile = SplitProfile.load(out / "split.json")
    assert profile.compress == "uint8" and profile.compress_outputs == "fp16"
    assert profile.dims == DET_DIMS  # recorded by symbol, however given
    assert [c.kind for c in profile.cuts] == ["remote", "split", "local"]
    assert 0 < profile.cuts[1].max_abs_error < 0.05  # what uint8 and fp16 lose, no more
    head = next((out / "heads").iterdir())
    head_model = onnx.load(Bundle.open(head).model_path, load_external_data=False)
    assert [o.version for o in head_model.opset_import if o.domain in ("", "ai.onnx")] == [13]


# ---------------------------------------------------------------- failed --out
def test_a_failed_split_leaves_nothing_behind(
    ppocr_models: Path, res_cnn: Path, tmp_path: Path
) -> None:
    """A cut of another model fails while profiling, after ``--out`` was made: the folder
    made for it goes, and a folder that was there keeps only what it held."""
    source = Bundle.open(res_cnn)
    foreign = cut_points(ppocr_models / DET, dims=DET_DIMS)
    chosen = [foreign[0], foreign[1], foreign[-1]]
    fresh = tmp_path / "fresh" / "out"
    with pytest.raises(InputError, match="not in this model"):
        write_split(source, chosen, fresh, repeats=1)
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    with pytest.raises(InputError, match="not in this model"):
        write_split(source, chosen, kept, repeats=1)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    assert (kept / "notes.txt").read_text() == "mine\n"


def test_a_bad_cut_on_the_cli_leaves_no_folder(
    ppocr_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    path = str(ppocr_models / DET)
    args = ["split", path, "--out", str(out), "--dim", "x.2=96,x.3=128"]
    assert "out of range" in cli_error([*args, "--cut", "9999"], capsys)
    assert "--compress 'int4'" in cli_error([*args, "--compress", "int4"], capsys)
    assert "unknown dimension(s)" in cli_error([*args, "--dim", "y.1=3"], capsys)
    assert not out.exists()


# ---------------------------------------------------------------- not ONNX
def test_a_tflite_model_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tflite = _package_file("wyoming_openwakeword", "models", "hey_jarvis_v0.1.tflite")
    want = "split works on ONNX models; this is a TFLite model (convert it to ONNX with tf2onnx"
    err = cli_error(["split", str(tflite), "--list"], capsys)
    assert want in err and "protobuf" not in err
    assert want in cli_error(["split", str(tflite), "-o", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()
    # a TFLite file under another name is known by its identifier
    renamed = tmp_path / "wakeword.bin"
    shutil.copyfile(tflite, renamed)
    with pytest.raises(BundleError, match=re.escape(want)):
        load_model(renamed)
    with pytest.raises(BundleError, match="this is a PyTorch file"):
        load_model(_touch(tmp_path / "model.pt"))


def _touch(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04")
    return path


# ---------------------------------------------------------------- the list at 80 columns
def _vad15() -> tuple[Path, dict[str, np.ndarray]]:
    from edgeinfer.zoo.audio import speech_like

    path = _package_file("silero_vad", "data", "silero_vad_16k_op15.onnx")
    window = speech_like(0.25, seed=0)[2000 : 2000 + 512][None].astype(np.float32)
    feeds = {"input": window, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000)}
    return path, feeds


@pytest.mark.slow
def test_the_cut_list_shows_what_crosses_at_80_columns(tmp_path: Path) -> None:
    path, feeds = _vad15()
    inputs = tmp_path / "chunk.npz"
    np.savez(inputs, **feeds)  # type: ignore[arg-type]
    cuts = cut_points(path, dims={"sequence": 512, "batch": 1}, inputs=feeds)
    assert sum(len(", ".join(c.tensors)) > 40 for c in cuts) > 10  # names that do not fit
    code, text = invoke("split", str(path), "--list", "-i", str(inputs), columns=80)
    assert code == 0, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    rows = [line for line in text.splitlines() if re.match(r"^\s*\d+\s+\d+\s", line)]
    assert len(rows) == len(cuts)
    for row, cut in zip(rows, cuts, strict=True):
        cell = re.split(r"\s{2,}", row.strip())[-1]
        count, _, names = cell.partition(": ")
        assert count == str(len(cut.tensors)), row
        shown = names.split(", ")
        assert shown[0] == cut.tensors[0], row  # the first name whole
        whole = shown[:-1] if shown[-1] == "…" else shown
        assert whole == list(cut.tensors[: len(whole)]), row  # no name cut in the middle
        assert (shown[-1] == "…") == (len(whole) < len(cut.tensors)), row
    assert "several tensors cross 44 of 44 cuts: names with --verbose, all with --json" in text
    # --verbose: every cut's names, whole, below the table
    code, verbose = invoke("split", str(path), "--list", "-i", str(inputs), "-v", columns=80)
    assert code == 0, verbose
    listed = verbose[verbose.index("crossing tensors, every cut:") :].splitlines()[1:]
    assert [line.strip() for line in listed] == [f"{c.index}: {', '.join(c.tensors)}" for c in cuts]
    # --json: everything, as the API gives it
    code, raw = invoke("split", str(path), "--list", "-i", str(inputs), "--json", columns=80)
    assert code == 0, raw
    data = json.loads(raw)
    assert data["model"] == path.stem and data["dims"] == {"sequence": 512, "batch": 1}
    assert [c["index"] for c in data["cuts"]] == [c.index for c in cuts]
    assert [[t["name"] for t in c["tensors"]] for c in data["cuts"]] == [
        list(c.tensors) for c in cuts
    ]
    assert [c["bytes_per_sample"] for c in data["cuts"]] == [c.bytes_per_sample for c in cuts]
    assert [c["kind"] for c in data["cuts"]] == [c.kind for c in cuts]
