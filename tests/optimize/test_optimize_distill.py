"""Distillation into a small student, and structured channel pruning before export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.optimize.passes.distill import DistillConfig, mlp_student, pick_loss, run
from edgeinfer.optimize.passes.prune import prune_channels

torch = pytest.importorskip("torch")


@pytest.mark.slow
def test_student_learns_the_teacher(digits_onnx: Path, digits: tuple, tmp_path: Path) -> None:
    x_train, _, x_test, _ = digits
    config = DistillConfig(
        student=lambda: mlp_student(64, 10, (64,)),
        data={"pixels": x_train},
        epochs=25,
        threads=1,
    )
    out = tmp_path / "student.onnx"
    info = run(digits_onnx, config, out).info
    assert info["loss"] == "kl" and info["final_loss"] < info["first_epoch_loss"]
    with edgeinfer.load(out) as student, edgeinfer.load(digits_onnx) as teacher:
        assert [s.name for s in student.inputs] == ["pixels"]
        s = student.predict({"pixels": x_test})["logits"].argmax(1)
        t = teacher.predict({"pixels": x_test})["logits"].argmax(1)
    assert np.mean(s == t) > 0.85
    assert out.stat().st_size < digits_onnx.stat().st_size


def test_distill_checks_its_inputs(digits_onnx: Path, digits: tuple, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs student"):
        run(digits_onnx, DistillConfig(data={"pixels": digits[0][:8]}), tmp_path / "s.onnx")
    bad = DistillConfig(student=mlp_student(64, 10), data={"pix": digits[0][:8]}, epochs=1)
    with pytest.raises(InputError, match=r"distillation data: missing input\(s\) 'pixels'"):
        run(digits_onnx, bad, tmp_path / "s.onnx")
    wrong = DistillConfig(student=mlp_student(64, 7), data={"pixels": digits[0][:8]}, epochs=1)
    with pytest.raises(InputError, match="student output shape"):
        run(digits_onnx, wrong, tmp_path / "s.onnx")
    with pytest.raises(InputError, match="distillation loss"):
        DistillConfig(loss="hinge")  # type: ignore[arg-type]


def test_pick_loss() -> None:
    emb = np.random.default_rng(0).standard_normal((8, 16))
    assert pick_loss(emb / np.linalg.norm(emb, axis=1, keepdims=True)) == "cosine"
    assert pick_loss(emb) == "kl"
    assert pick_loss(emb[:, :1]) == "mse"


def test_prune_channels_shrinks_a_cnn() -> None:
    from edgeinfer import zoo

    net = zoo.digits.make_cnn().eval()
    x = torch.randn(4, 1, 8, 8)
    pruned = prune_channels(net, 0.5, x)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(pruned) < 0.4 * params(net)
    assert pruned.conv1.out_channels == 8 and pruned.fc1.in_features == 32 * 4
    assert pruned(x).shape == (4, 10)
    # pruning (almost) nothing keeps the network's function exactly
    same = prune_channels(net, 1e-3, x)
    with torch.no_grad():
        torch.testing.assert_close(same(x), net(x))
    assert params(net) == params(zoo.digits.make_cnn())  # the original is untouched
    with pytest.raises(InputError, match="amount"):
        prune_channels(net, 1.0, x)
