"""The sweep behind ``edgeinfer offload-bench``: the CLI end to end on a tiny model; models
with token types warm up (the server warms every model up before serving it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from offload_helpers import mlp
from onnx import TensorProto, helper, numpy_helper

import edgeinfer


def _token_type_model(path: Path) -> Path:
    """ids: int64 [N, S], token_type_ids: int64 [N, S] -> out: float32 [N, S, 2]."""
    table = np.arange(4, dtype=np.float32).reshape(2, 2)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "token_type_ids"], ["emb"]),
         helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["idf", "axis"], ["idu"]),
         helper.make_node("Add", ["emb", "idu"], ["out"])],
        "tt",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
         helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["N", "S"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "S", 2])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([2], np.int64), "axis")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


def test_models_with_token_types_warm_up(tmp_path: Path) -> None:
    src = _token_type_model(tmp_path / "tt.onnx")
    with edgeinfer.load(src) as model:
        feeds = model.sample_inputs(batch=2, dims={"S": 5})
        assert (feeds["token_type_ids"] == 0).all()
        model.warmup()


@pytest.mark.slow
def test_offload_bench_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeinfer.cli.main import main

    model = mlp(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["offload-bench", "--model", str(model), "--rtt", "1ms", "--rate", "100mbit",
              "--slowdown", "1,8", "--rounds", "1", "--out", str(out)])  # fmt: skip
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "tiny" in text and "oracle" in text
    data = json.loads((out / "offload_bench.json").read_text())
    assert len(data) == 2
    for cell in data:
        assert set(cell["mean_ms"]) == {"local", "remote", "latency", "energy"}
        assert cell["failures"] == 0 and cell["oracle"] in ("local", "remote")
    assert (out / "offload_bench.png").stat().st_size > 0


def test_offload_bench_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeinfer.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["offload-bench", "--model", "nope.bin"])
    assert exc.value.code == 2
    assert "expected 'digits', 'minilm' or the path of an .onnx file" in capsys.readouterr().err
