"""Split computing on models other people exported: PP-OCR's detector, direction
classifier and text recognizer (Paddle -> ONNX: ``?`` dims, a batch stored as -1, a
dynamic width) and nudenet's detector, on crops of real photographs.

The halves must take every size the whole model takes (the recognizer reads text lines of
any width), sizes come from real inputs without ``--dim``, and the CLI's hints and tables
must be usable as printed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app, main
from edgeinfer.cli.split import kb
from edgeinfer.split import SplitProfile, cut_points, extract, input_dims, select_cuts

REC = "ch_PP-OCRv4_rec_infer.onnx"
CLS = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DET = "ch_PP-OCRv4_det_infer.onnx"
TOL = 1e-4

runner = CliRunner()


def photo(height: int, width: int, batch: int = 1, *, paddle: bool = True) -> np.ndarray:
    """Crops of scikit-learn's sample photographs, float32 [batch,3,height,width];
    ``paddle``: normalized to [-1, 1] as PP-OCR's preprocessing does, else [0, 1]."""
    from sklearn.datasets import load_sample_image

    crops = []
    for i in range(batch):
        img = load_sample_image(("china.jpg", "flower.jpg")[i % 2])
        top, left = 40 * i, 60 + 20 * i
        crops.append(img[top : top + height, left : left + width].transpose(2, 0, 1))
    x = np.stack(crops).astype(np.float32) / 255.0
    return np.ascontiguousarray((x - 0.5) / 0.5 if paddle else x)


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name: feeds[i.name] for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, wanted), strict=True))


def head_then_tail(head: Path, tail: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sent = run_ort(head, feeds)
    (out,) = run_ort(tail, {**feeds, **sent}).values()
    return out


def invoke(*args: str, columns: int = 80) -> tuple[int, str]:
    result = runner.invoke(build_app(), list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---------------------------------------------------------------- the halves stay dynamic
@pytest.mark.slow
def test_recognizer_halves_take_any_width(ppocr_models: Path, tmp_path: Path) -> None:
    path = ppocr_models / REC
    line = photo(48, 320)
    dims = input_dims(path, {"x": line})
    assert dims == {"x.2": 48, "p2o.DynamicDimension.1": 320}  # '?' is not a symbol
    cuts = cut_points(path, dims=dims)
    widths = [line, photo(48, 160, batch=2)]  # another width, and a batch of two
    wants = [run_ort(path, {"x": x})["softmax_11.tmp_0"] for x in widths]
    assert wants[0].shape[1] != wants[1].shape[1]  # the sequence follows the width
    middles = select_cuts(cuts, 5)[1:-1]
    for cut in middles:
        head, tail = extract(path, cut, tmp_path / str(cut.index), dims=dims)
        for x, want in zip(widths, wants, strict=True):
            got = head_then_tail(head, tail, {"x": x})
            assert got.shape == want.shape, (cut.index, x.shape)
            assert float(np.abs(got - want).max()) <= TOL, (cut.index, x.shape)
    # a feature map's width stays open; its height (the model takes only 48) is fixed
    conv = next(t for c in middles for t in c.crossing if len(t.shape or ()) == 4)
    assert conv.shape is not None and conv.shape[3] is None and isinstance(conv.shape[2], int)


def test_classifier_with_batch_stored_as_minus_one(ppocr_models: Path, tmp_path: Path) -> None:
    path = ppocr_models / CLS
    declared = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type
    assert declared.shape.dim[0].dim_value == -1  # the case that crashed
    dims = input_dims(path, photo(48, 192))
    assert dims == {"x.2": 48, "x.3": 192}  # two '?' axes, two sizes
    cuts = cut_points(path, dims=dims)
    assert cuts[0].crossing[0].shape == ("batch", 3, None, None)
    cut = select_cuts(cuts, 3)[1]
    head, tail = extract(path, cut, tmp_path / "cut", dims=dims)
    for x in (photo(48, 192), photo(48, 100, batch=3)):
        want = run_ort(path, {"x": x})["save_infer_model/scale_0.tmp_1"]
        assert float(np.abs(head_then_tail(head, tail, {"x": x}) - want).max()) <= TOL


# ---------------------------------------------------------------- the CLI on them
@pytest.mark.slow
def test_sizes_come_from_the_inputs(
    ppocr_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(ppocr_models / REC)
    inputs = tmp_path / "line.npy"
    np.save(inputs, photo(48, 320))
    err = cli_error(["split", path, "--list"], capsys)
    assert "--inputs FILE" in err and ", p2o" not in err  # no comma form the CLI would refuse
    hint = re.search(r"\(CLI: (--dim \S+=N(?: --dim \S+=N)*);", err)
    assert hint is not None, err
    assert hint.group(1) == "--dim x.2=N --dim p2o.DynamicDimension.1=N"
    # the hint, as printed, is what the CLI takes
    as_hinted = hint.group(1).replace("x.2=N", "x.2=48").replace(".1=N", ".1=320").split()
    code, hinted = invoke("split", path, "--list", *as_hinted)
    assert code == 0, hinted
    code, from_inputs = invoke("split", path, "--list", "--inputs", str(inputs))
    assert code == 0, from_inputs
    assert from_inputs == hinted  # the same cuts, sized the same
    code, commas = invoke("split", path, "--list", "--dim", "x.2=48,p2o.DynamicDimension.1=320")
    assert code == 0 and commas == hinted
    err = cli_error(
        ["split", path, "--list", "-i", str(inputs), "--dim", "p2o.DynamicDimension.1=100"], capsys
    )
    assert re.search(r"--dim p2o.DynamicDimension.1=100 disagrees with .*line.npy.* is 320", err)
    err = cli_error(["split", path, "--list", "-i", str(inputs), "--dim", "width=3"], capsys)
    assert "unknown dimension(s) 'width'" in err and "'x.2', 'p2o.DynamicDimension.1'" in err


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if re.match(r"^\s*\d+\s", line)]


@pytest.mark.slow
def test_tables_fit_80_columns(ppocr_models: Path, res_cnn: Path, tmp_path: Path) -> None:
    code, text = invoke("split", str(res_cnn), "-o", str(tmp_path / "o"), "--repeats", "1")
    assert code == 0, text
    table = text[: text.index("profile: ")]  # then paths, whole to be copied
    assert max(len(line) for line in table.splitlines()) <= 80, text
    profile = SplitProfile.load(tmp_path / "o" / "split.json")
    want = [
        [
            str(c.index), c.kind, kb(c.bytes_up), kb(c.packed_up or 0), kb(c.bytes_down),
            kb(c.packed_down or 0), f"{c.head_ms:.2f}", f"{c.tail_ms:.2f}",
            f"{c.max_abs_error:.2g}",
        ]
        for c in profile.cuts
    ]  # fmt: skip
    assert _rows(text) == want, text  # every cell whole
    assert "output compression none" in text
    # the cut list of a model with long tensor names: numbers whole, names cut short
    inputs = tmp_path / "x.npy"
    np.save(inputs, photo(48, 192))
    code, text = invoke("split", str(ppocr_models / CLS), "--list", "-i", str(inputs))
    assert code == 0, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    cuts = cut_points(ppocr_models / CLS, dims={"x.2": 48, "x.3": 192})
    rows = _rows(text)
    assert [r[:4] for r in rows] == [
        [str(c.index), str(c.position), c.kind, kb(c.bytes_per_sample)] for c in cuts
    ]
    assert [r[4] for r in rows] == [f"{len(c.tensors)}:" for c in cuts]
    assert any(line.rstrip().endswith("…") for line in text.splitlines())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("model", "shape"),
    [(DET, (1, 3, 96, 128)), (CLS, (1, 3, 48, 192)), (REC, (1, 3, 48, 160)), ("nudenet", None)],
)
def test_list_and_split_every_third_party_model(
    request: pytest.FixtureRequest, tmp_path: Path, model: str, shape: tuple[int, ...] | None
) -> None:
    if shape is None:
        path = request.getfixturevalue("nudenet_path")
        x = photo(160, 160, paddle=False)  # nudenet takes [0, 1] photos
    else:
        path = request.getfixturevalue("ppocr_models") / model
        x = photo(*shape[2:], batch=shape[0])
    inputs = tmp_path / "x.npz"
    feeds = {"images" if shape is None else "x": x}
    np.savez(inputs, **feeds)  # type: ignore[arg-type]
    code, text = invoke("split", str(path), "--list", "-i", str(inputs))
    assert code == 0, text
    assert "no cut points" not in text and "split" in text
    out = tmp_path / "out"
    code, text = invoke(
        "split", str(path), "-o", str(out), "-i", str(inputs), "--max-cuts", "3", "--repeats", "1"
    )  # fmt: skip
    assert code == 0, text
    profile = SplitProfile.load(out / "split.json")
    assert [c.kind for c in profile.cuts] == ["remote", "split", "local"]
    assert max(c.max_abs_error for c in profile.cuts) <= TOL
    assert profile.dims == input_dims(path, feeds)


def test_a_model_without_cut_points_says_so(tmp_path: Path) -> None:
    path = tmp_path / "relu.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    code, text = invoke("split", str(path), "--list")
    assert code == 0, text
    assert text.strip() == (
        "relu: no cut points besides remote-only and local-only (the graph has 1 node); "
        "it runs whole on one side"
    )
    code, text = invoke("split", str(path), "-o", str(tmp_path / "o"), "--repeats", "1")
    assert code == 0 and "no cut points" in text, text
    profile = SplitProfile.load(tmp_path / "o" / "split.json")
    assert [c.kind for c in profile.cuts] == ["remote", "local"]


@pytest.mark.slow
def test_a_model_that_runs_only_on_real_values(tmp_path: Path) -> None:
    """silero-vad's detector checks its sample-rate input: the sizes shape inference
    cannot resolve are measured on the real inputs, not on zeros."""
    from edgeinfer.zoo import vad
    from edgeinfer.zoo.audio import speech_like

    chunk, context = vad.CHUNK[16000], vad.CONTEXT[16000]
    window = np.zeros((1, context + chunk), np.float32)
    window[0, context:] = speech_like(0.25, seed=0)[2000 : 2000 + chunk]
    inputs = tmp_path / "chunk.npz"
    np.savez(inputs, input=window, state=np.zeros((2, 1, 128), np.float32), sr=np.array(16000))
    path = str(vad.model_path())
    code, text = invoke("split", path, "--list", "-i", str(inputs))
    assert code == 0, text
    assert "3: input, state, sr" in text and " split " in text
    out = tmp_path / "out"
    code, text = invoke("split", path, "-o", str(out), "-i", str(inputs), "--repeats", "1")
    assert code == 0, text
    profile = SplitProfile.load(out / "split.json")
    assert "split" in [c.kind for c in profile.cuts]
    assert max(c.max_abs_error for c in profile.cuts) <= TOL
