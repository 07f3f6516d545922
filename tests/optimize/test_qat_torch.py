"""Quantization-aware training of a torch module (edgeinfer.optimize.qat_torch).

A small CNN is trained here on scikit-learn's digits, then fine-tuned with fake
quantization; the QDQ model written from it is opened and run in ONNX Runtime, and the
report sets it beside post-training static INT8 of the same float export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeinfer.convert.errors import ConversionError  # noqa: E402
from edgeinfer.errors import EdgeInferError, InputError  # noqa: E402
from edgeinfer.optimize import EpochStats, QATConfig, SearchConfig, qat_torch  # noqa: E402
from edgeinfer.zoo._torch import threads  # noqa: E402

_FAST: dict[str, Any] = {"repeats": 3, "final_rounds": 5, "memory": False}


@pytest.fixture(scope="module")
def cnn() -> Any:
    """The digits CNN at width 8, trained for 3 epochs (well short of its best: room for
    quantization to hurt and for QAT to recover)."""
    from edgeinfer import zoo

    return zoo.digits.train(epochs=3, width=8)


@pytest.mark.slow
def test_qat_torch_writes_learned_qdq_model_beside_ptq(
    cnn: Any, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    x_train, y_train, x_test, y_test = digits
    epochs: list[EpochStats] = []
    seen: dict[str, Any] = {}

    def progress(event: str, cand: Any, index: int, total: int) -> None:
        seen.setdefault("totals", set()).add(total)
        if event == "evaluate" and cand.name == "qat-int8":
            # The QAT model exists only in the work directory while it is measured.
            model = onnx.load(str(cand.path))
            seen["ops"] = {n.op_type for n in model.graph.node}
            session = ort.InferenceSession(str(cand.path), providers=["CPUExecutionProvider"])
            seen["logits"] = session.run(None, {"pixels": x_test[:16]})[0]

    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    result = qat_torch(
        cnn,
        x_train[:4],
        (x_train, y_train),
        {"pixels": x_test, "labels": y_test},
        tmp_path / "digits-qat",
        qat=QATConfig(epochs=2),
        config=SearchConfig(
            metric="accuracy", max_drop=0.02, candidates=("static-int8-minmax",), **_FAST
        ),
        input_names=["pixels"],
        output_names=["logits"],
        progress=progress,
        on_epoch=epochs.append,
    )
    assert [e.epoch for e in epochs] == [1, 2] and [e.frozen for e in epochs] == [False, True]
    assert all(np.isfinite(e.loss) for e in epochs)
    assert seen["totals"] == {3}  # original, PTQ, QAT: one count for the whole run
    assert {"QuantizeLinear", "DequantizeLinear"} <= seen["ops"]
    assert seen["logits"].shape == (16, 10)
    # The caller's module is left as it was: QAT trains a copy.
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())

    rows = {c.name: c for c in result.result.candidates}
    ptq, qat = rows["static-int8-minmax"], rows["qat-int8"]
    assert ptq.status == "ok" and qat.status == "ok", (ptq.reason, qat.reason)
    base = result.result.baseline.evaluation
    assert base is not None and qat.evaluation is not None
    assert qat.evaluation.metrics["accuracy"] >= base.metrics["accuracy"] - 0.05
    info = qat.infos[0]
    assert info["activation_scales_checked"] >= 5 and info["weight_tensors_checked"] == 5
    assert info["activation_scale_max_rel_diff"] <= 1e-5
    assert info["weight_scale_max_rel_diff"] <= 1e-5
    assert qat.recipe is not None
    steps = [s["pass"] for s in qat.recipe.to_dict()["steps"]]
    assert steps[:3] == ["qat", "graph", "static_int8_learned_ranges"]

    report = json.loads((tmp_path / "digits-qat-report" / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert names == ["original", "static-int8-minmax", "qat-int8"]
    assert [e["epoch"] for e in report["qat_epochs"]] == [1, 2]
    text = (tmp_path / "digits-qat-report" / "report.md").read_text()
    assert "| static-int8-minmax" in text and "| qat-int8" in text and "PTQ vs QAT" in text
    manifest = result.bundle.manifest
    assert manifest.metrics["optimize"]["metric"] == "accuracy"
    assert manifest.provenance["recipe"]["candidate"] == result.result.chosen.name


@pytest.mark.slow
def test_qat_torch_float_targets_train_with_mse(
    digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    """A regressor (each image row's mean ink, 8 floats): float targets mean MSE training,
    and the lower-is-better metric gates the candidates."""
    x_train, _, x_test, _ = digits
    t_train, t_test = x_train.mean(axis=3).reshape(-1, 8), x_test.mean(axis=3).reshape(-1, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 8),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    with threads(1):  # a tiny network: a second thread only waits on a shared machine
        for _ in range(200):
            idx = torch.randint(0, len(x_train), (64,))
            loss = torch.nn.functional.mse_loss(
                net(torch.from_numpy(x_train[idx])), torch.from_numpy(t_train[idx])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    epochs: list[EpochStats] = []
    result = qat_torch(
        net.eval(),
        x_train[:4],
        {"input": x_train[:512], "labels": t_train[:512]},
        {"input": x_test[:200], "labels": t_test[:200]},
        tmp_path / "rows",
        qat=QATConfig(epochs=1),
        config=SearchConfig(
            metric="mse", max_drop="20%", candidates=("static-int8-minmax",), **_FAST
        ),
        on_epoch=epochs.append,
    )
    assert len(epochs) == 1 and not epochs[0].frozen
    qat = result.result.candidates[-1]
    assert qat.name == "qat-int8" and qat.status == "ok" and qat.evaluation is not None
    base = result.result.baseline.evaluation
    assert base is not None
    # MSE training kept the regressor a regressor: within 2x of float's error.
    assert qat.evaluation.metrics["mse"] <= 2 * base.metrics["mse"]
    assert qat.infos[0]["activation_scales_checked"] >= 2


class _NoTensor(torch.nn.Module):  # type: ignore[misc,name-defined]
    def forward(self, x: Any) -> Any:
        return None


class _Branchy(torch.nn.Module):  # type: ignore[misc,name-defined]
    """Exports by tracing (one branch taken), but torch.fx cannot trace the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: Any) -> Any:
        x = x.flatten(1)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


def _small() -> Any:
    from edgeinfer import zoo

    return zoo.digits.make_cnn(width=2)


@pytest.mark.parametrize(
    ("make", "train", "qat", "error", "match"),
    [
        (_small, "ok", {"epochs": 0}, InputError, r"epochs must be an integer >= 1, got 0"),
        (_small, "ok", {"lr": -1.0}, InputError, r"lr must be a positive number"),
        (
            _small,
            "shape",
            {},
            InputError,
            r"training data: input 'pixels': expected float32 \[batch,1,8,8\], got float32 "
            r"\[64,1,9,9\]",
        ),
        (_small, "nolabels", {}, InputError, r"training data has no labels"),
        (
            _small,
            "range",
            {},
            InputError,
            r"labels range over 1\.\.12; the output has 10 classes \(0\.\.9\)",
        ),
        (_NoTensor, "ok", {}, ConversionError, r"forward\(\) returned a NoneType"),
        (_Branchy, "ok", {}, InputError, r"torch\.fx cannot trace _Branchy"),
        (lambda: "not a module", "ok", {}, InputError, r"takes a torch\.nn\.Module, got str"),
    ],
    ids=["epochs", "lr", "shape", "no-labels", "label-range", "no-export", "no-trace", "no-module"],
)
def test_qat_torch_bad_input_is_one_line(
    make: Any,
    train: str,
    qat: dict[str, Any],
    error: type[EdgeInferError],
    match: str,
    digits: tuple[np.ndarray, ...],
    tmp_path: Path,
) -> None:
    x_train, y_train, x_test, y_test = (a[:64] for a in digits)
    data: Any = (x_train, y_train)
    if train == "shape":
        data = (np.zeros((64, 1, 9, 9), np.float32), y_train)
    elif train == "nolabels":
        data = {"pixels": x_train}
    elif train == "range":
        data = (x_train, np.where(y_train == 0, 12, y_train))
    with pytest.raises(error, match=match) as info:
        qat_torch(
            make(),
            x_train[:4],
            data,
            {"pixels": x_test, "labels": y_test},
            tmp_path / "out",
            qat=QATConfig(**qat) if qat else None,
            input_names=["pixels"],
            output_names=["logits"],
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
