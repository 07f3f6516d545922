"""Cut enumeration and head/tail extraction on real graphs: head -> tail == full model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeinfer.errors import BundleError, InputError
from edgeinfer.runtime import load
from edgeinfer.split import Cut, cut_points, extract, select_cuts
from edgeinfer.split.extract import HEAD_FILE, TAIL_FILE

TOL = 1e-5


def run_split(head: Path, tail: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with load(head, providers=["cpu"]) as h, load(tail, providers=["cpu"]) as t:
        sent = h.predict({s.name: feeds[s.name] for s in h.inputs})
        assert sorted(sent) == sorted(s.name for s in t.inputs)
        return t.predict(sent)


def max_error(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    assert sorted(want) == sorted(got)
    return max(float(np.abs(want[k].astype(np.float64) - got[k]).max()) for k in want)


def full_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with load(path, providers=["cpu"]) as m:
        return m.predict(feeds)


# ---------------------------------------------------------------- enumeration
def test_cut_list_shape_and_order(res_cnn: Path) -> None:
    cuts = cut_points(res_cnn)
    assert [c.index for c in cuts] == list(range(len(cuts)))
    positions = [c.position for c in cuts]
    assert positions == sorted(set(positions))
    first, last = cuts[0], cuts[-1]
    assert first.kind == "remote" and first.tensors == ("pixels",)
    assert first.bytes_per_sample == 1 * 8 * 8 * 4
    assert last.kind == "local" and last.tensors == ("logits",)
    assert all(c.kind == "split" for c in cuts[1:-1])
    assert len({frozenset(c.tensors) for c in cuts}) == len(cuts)  # no duplicate sets
    assert all(len(c.tensors) <= 4 for c in cuts)


def test_cuts_inside_residual_and_branches(res_cnn: Path) -> None:
    sets = {c.tensors: c for c in cut_points(res_cnn)}
    # before the block, and inside it: the skip connection r1 crosses with the branch
    assert ("r1",) in sets and sets[("r1",)].bytes_per_sample == 8 * 8 * 8 * 4
    assert ("r1", "c2r") in sets or ("c2r", "r1") in sets
    assert any("r1" in t and "c3" in t for t in sets)
    # between the two branches: one branch's output and the block input cross
    assert any("ba" in t and "r2" in t for t in sets)
    # the reshape target is a per-request shape tensor, not batched
    shaped = [c for c in sets.values() if "flat_shape" in c.tensors]
    assert shaped and all(
        not t.batched and t.bytes_per_sample == 16
        for c in shaped
        for t in c.crossing
        if t.name == "flat_shape"
    )


def test_max_tensors_bounds_interior_cuts(res_cnn: Path) -> None:
    narrow = cut_points(res_cnn, max_tensors=1)
    assert all(len(c.tensors) == 1 for c in narrow)
    assert len(narrow) < len(cut_points(res_cnn))
    assert ("r1",) in [c.tensors for c in narrow]


def test_select_cuts_keeps_extremes(res_cnn: Path) -> None:
    cuts = cut_points(res_cnn)
    chosen = select_cuts(cuts, 4)
    assert chosen[0] == cuts[0] and chosen[-1] == cuts[-1] and 2 < len(chosen) <= 4
    assert select_cuts(cuts, 100) == cuts
    with pytest.raises(InputError, match=">= 2"):
        select_cuts(cuts, 1)


def test_cut_round_trips_through_dict(res_cnn: Path) -> None:
    for cut in cut_points(res_cnn):
        assert Cut.from_dict(cut.to_dict()) == cut


# ---------------------------------------------------------------- head + tail == full
def test_every_cut_of_residual_cnn_is_exact(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path
) -> None:
    feeds = {"pixels": digits_x}
    want = full_outputs(res_cnn, feeds)
    for cut in cut_points(res_cnn):
        head, tail = extract(res_cnn, cut, tmp_path / f"cut-{cut.index}")
        assert (head.name, tail.name) == (HEAD_FILE, TAIL_FILE)
        assert max_error(want, run_split(head, tail, feeds)) <= TOL, cut


def test_extract_by_index_keeps_versions(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path
) -> None:
    head, tail = extract(res_cnn, 3, tmp_path)
    src = onnx.load(res_cnn)
    for half in (head, tail):
        m = onnx.load(half)
        assert m.ir_version == src.ir_version
        assert [(o.domain, o.version) for o in m.opset_import] == [
            (o.domain, o.version) for o in src.opset_import
        ]
    # batch sizes other than the one sized for still work
    for n in (1, 5):
        feeds = {"pixels": digits_x[:n]}
        assert max_error(full_outputs(res_cnn, feeds), run_split(head, tail, feeds)) <= TOL


def test_digits_cnn_cuts_are_exact(digits_cnn: Path, digits_x: np.ndarray, tmp_path: Path) -> None:
    feeds = {"pixels": digits_x}
    want = full_outputs(digits_cnn, feeds)
    cuts = cut_points(digits_cnn)
    assert len(cuts) >= 5
    for cut in cuts:
        head, tail = extract(digits_cnn, cut, tmp_path / str(cut.index))
        assert max_error(want, run_split(head, tail, feeds)) <= TOL, cut


@pytest.mark.slow
def test_nudenet_detector_cuts_are_exact(
    nudenet_path: Path, photos: np.ndarray, tmp_path: Path
) -> None:
    dims = {"height": 320, "width": 320}
    cuts = cut_points(nudenet_path, dims=dims)
    assert len(cuts) > 50
    # branches: the neck carries backbone features across many cuts
    assert any(len(c.tensors) >= 3 for c in cuts)
    feeds = {"images": photos}
    want = full_outputs(nudenet_path, feeds)
    for cut in select_cuts(cuts, 6):
        head, tail = extract(nudenet_path, cut, tmp_path / str(cut.index))
        assert max_error(want, run_split(head, tail, feeds)) <= TOL, cut


def test_external_data_model(res_cnn: Path, digits_x: np.ndarray, tmp_path: Path) -> None:
    model = onnx.load(res_cnn)
    ext = tmp_path / "ext" / "model.onnx"
    ext.parent.mkdir()
    onnx.save(model, ext, save_as_external_data=True, location="model.data", size_threshold=0)
    assert (ext.parent / "model.data").is_file()
    cuts = cut_points(ext)
    head, tail = extract(ext, cuts[len(cuts) // 2], tmp_path / "out")
    feeds = {"pixels": digits_x[:4]}
    assert max_error(full_outputs(res_cnn, feeds), run_split(head, tail, feeds)) <= TOL


# ---------------------------------------------------------------- bad input
def test_cut_index_out_of_range(res_cnn: Path, tmp_path: Path) -> None:
    n = len(cut_points(res_cnn))
    with pytest.raises(InputError, match=rf"cut index {n} is out of range.*{n} cuts"):
        extract(res_cnn, n, tmp_path)
    with pytest.raises(InputError, match="out of range"):
        extract(res_cnn, -1, tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"this is not a model at all \x00\xff", "not an ONNX model"), (b"", "not an ONNX model")],
)
def test_not_an_onnx_file(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(BundleError, match=message):
        cut_points(bad)
    with pytest.raises(BundleError, match=message):
        extract(bad, 0, tmp_path / "out")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such ONNX model file"):
        cut_points(tmp_path / "nope.onnx")


def test_cut_of_another_model(res_cnn: Path, mlp_path: Path, tmp_path: Path) -> None:
    other = cut_points(mlp_path)[1]
    with pytest.raises(InputError, match="not in this model"):
        extract(res_cnn, other, tmp_path)


def test_unsized_dynamic_dims(nudenet_path: Path) -> None:
    with pytest.raises(InputError, match=r"'height', 'width'.*--dim height=N"):
        cut_points(nudenet_path)


def test_bad_arguments(res_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="max_tensors"):
        cut_points(res_cnn, max_tensors=0)
    with pytest.raises(InputError, match="Cut or an integer"):
        extract(res_cnn, "3", tmp_path)  # type: ignore[arg-type]


@pytest.mark.slow
def test_minilm_cuts_between_encoder_layers(tmp_path: Path) -> None:
    from edgeinfer import zoo

    path = zoo.minilm.export()
    cuts = cut_points(path, dims={"sequence": 128})
    # between encoder layers: the hidden state crosses with the attention mask carried along
    boundaries = [
        c
        for c in cuts
        if "attention_mask" in c.tensors
        and any(t.endswith("output/LayerNorm/LayerNormalization_output_0") for t in c.tensors)
    ]
    assert len(boundaries) >= 5
    layer3 = next(c for c in boundaries if any("layer.2/output/LayerNorm" in t for t in c.tensors))
    hidden = next(t for t in layer3.crossing if "LayerNorm" in t.name)
    assert hidden.shape == ("batch", "sequence", 384) and hidden.bytes_per_sample == 128 * 384 * 4
    text = zoo.minilm.sentences(6)
    for cut in (cuts[1], layer3, cuts[-2]):
        head, tail = extract(path, cut, tmp_path / str(cut.index))
        for seq_len in (128, 32):  # the sequence stays dynamic in both halves
            feeds = zoo.minilm.tokenize(text, seq_len=seq_len)
            want = full_outputs(path, feeds)
            assert max_error(want, run_split(head, tail, feeds)) <= TOL, (cut.index, seq_len)


def test_unsorted_graph_and_early_output(
    res_cnn: Path, digits_x: np.ndarray, tmp_path: Path
) -> None:
    from onnx import TensorProto, helper

    model = onnx.load(res_cnn)
    # a second model output computed early (the first block's activation) ...
    model.graph.output.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, None))
    # ... and nodes stored out of order: cut points follow a topological order regardless
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    path = tmp_path / "shuffled.onnx"
    onnx.save(model, path)
    feeds = {"pixels": digits_x[:8]}
    want = full_outputs(res_cnn, feeds)
    cuts = cut_points(path)
    assert [c.position for c in cuts] == sorted(c.position for c in cuts)
    assert cuts[-1].tensors == ("logits", "r1") or set(cuts[-1].tensors) == {"logits", "r1"}
    for cut in cuts:
        head, tail = extract(path, cut, tmp_path / str(cut.index))
        got = run_split(head, tail, feeds)
        assert float(np.abs(got["logits"] - want["logits"]).max()) <= TOL, cut
        assert "r1" in got


def test_input_dims_reads_sizes_and_refuses_two_sizes_of_one_symbol(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from edgeinfer.split import input_dims

    path = tmp_path / "add.onnx"
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "seq", None]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "seq", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "seq", None])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    a, b = np.ones((2, 3, 5), np.float32), np.ones((2, 3, 1), np.float32)
    dims = input_dims(path, {"a": a, "b": b})
    assert dims == {"seq": 3, "a.2": 5}  # the batch is not a dim; an unnamed axis is a.2
    cuts = cut_points(path, dims=dims)
    assert cuts[0].crossing[0].shape == ("N", "seq", None)
    with pytest.raises(InputError, match=r"'seq' is 3 in input 'a' but 4 in input 'b'"):
        input_dims(path, {"a": a, "b": np.ones((2, 4, 1), np.float32)})
    with pytest.raises(InputError, match=r"'a.2' \(input 'a' axis 2, unnamed\).*--dim a.2=N"):
        cut_points(path, dims={"seq": 3})
