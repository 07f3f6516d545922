"""``edgeinfer inspect`` counts parameters however an exporter stored them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgeinfer.cli.main import build_app
from onnx_builders import IR_VERSION

runner = CliRunner()


def parameters(path: Path) -> int:
    result = runner.invoke(build_app(), ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    count: int = json.loads(result.stdout)["parameters"]
    return count


def test_constants_int8_initializers_and_subgraphs_count(tmp_path: Path) -> None:
    """x [N,3] -> y [N,2]: a float weight as a Constant node (as Paddle exports), an int8
    initializer dequantized in the graph, and a bias inside an If branch."""
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    q = np.ones((2, 2), np.int8)
    branch_bias = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["b"], value=numpy_helper.from_array(np.ones(2, np.float32))
            )
        ],
        "then",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("DequantizeLinear", ["q", "scale"], ["qf"]),
        helper.make_node("MatMul", ["h", "qf"], ["h2"]),
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node(
            "If", ["cond"], ["bias"], then_branch=branch_bias, else_branch=branch_bias
        ),
        helper.make_node("Add", ["h2", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.float32(0.5), "scale")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.save(model, tmp_path / "mixed.onnx")
    # w 6 + condition 1 + q 4 + scale 1 + bias 2 in each branch
    assert parameters(tmp_path / "mixed.onnx") == 6 + 1 + 4 + 1 + 2 * 2


def test_tree_ensemble_weights_are_parameters(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    from edgeinfer.convert.sklearn import sklearn_to_onnx

    x, y = load_breast_cancer(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0)
    forest.fit(x.astype(np.float32), y)
    path = sklearn_to_onnx(forest, tmp_path / "forest.onnx", sample=x[:4].astype(np.float32)).path
    assert not onnx.load(path).graph.initializer  # everything lives in node attributes
    nodes = sum(t.tree_.node_count for t in forest.estimators_)
    assert parameters(path) >= nodes  # at least a threshold per node, plus leaf weights


def test_paddle_recognizer_weights_are_constant_nodes(ppocr_models: Path) -> None:
    path = ppocr_models / "ch_PP-OCRv4_rec_infer.onnx"
    assert not onnx.load(path).graph.initializer
    # 10.9 MB of float32 weights is about 2.7 million parameters
    assert 2_600_000 < parameters(path) < path.stat().st_size / 4
