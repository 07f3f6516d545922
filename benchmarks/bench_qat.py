"""Quantization-aware training of a torch module: float vs post-training INT8 vs QAT INT8.

For each model, ``edgeinfer.optimize.qat_torch`` runs once (``metric=accuracy,
max_drop=0.005, objective=latency``): the float export, the ONNX search's static INT8
candidates on it (min/max, entropy and percentile calibration on the first 128 training
images: the PTQ rows) and the QAT candidate (2 epochs of fake-quantized fine-tuning,
Adam at 1e-4, QDQ INT8 with the learned ranges). Accuracy is on the 450 held-out digits.
The float model, the best PTQ model and the QAT model are then timed side by side in
ONNX Runtime (single-sample calls, round-robin, medians, 1 thread).

Models:

- ``digits-cnn``: the zoo's digits CNN (width 16, 20 epochs, ~41k parameters);
- ``digits-cnn-w4``: the same network 4x narrower (fewer channels: less redundancy for
  quantization error to hide in).

Control: the float model fine-tuned for the same epochs at the same rate *without* fake
quantization (``float-finetuned``), so that a QAT gain is not just more training.

Run: .venv/bin/python benchmarks/bench_qat.py [--models digits-cnn,digits-cnn-w4]
Writes benchmarks/results/qat.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write
from edgeinfer import zoo
from edgeinfer.optimize import QATConfig, SearchConfig, compare_latency, qat_torch

MODELS = {"digits-cnn": 16, "digits-cnn-w4": 4}
EPOCHS = 20  # float training
QAT = QATConfig(epochs=2, lr=1e-4, threads=1)
ROUNDS = 400  # round-robin single-sample calls per model in the final timing


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return round(zoo.digits.accuracy(path, x, y), 4)


def _finetuned(module: Any, x: np.ndarray, y: np.ndarray, out: Path) -> Path:
    """The control: the same epochs, rate and batches as QAT, without fake quantization."""
    import torch

    net = copy.deepcopy(module).train()
    opt = torch.optim.Adam(net.parameters(), lr=QAT.lr)
    gen = torch.Generator().manual_seed(QAT.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(QAT.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), QAT.batch_size):
            idx = order[start : start + QAT.batch_size]
            opt.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return zoo.digits.export_onnx(net.eval(), out)


def bench_model(name: str, width: int, work: Path) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = zoo.digits.load_data()
    t0 = time.perf_counter()
    module = zoo.digits.train(EPOCHS, width=width)
    train_s = time.perf_counter() - t0
    kept = work / name
    kept.mkdir()
    epochs: list[dict[str, Any]] = []

    def progress(event: str, cand: Any, index: int, total: int) -> None:
        # The candidates' files live in the run's scratch directory: copy them while there.
        if cand.path is not None and event in ("done", "evaluate"):
            target = kept / f"{cand.name}.onnx"
            if not target.exists():
                shutil.copy(cand.path, target)

    load_before = _load()
    t0 = time.perf_counter()
    result = qat_torch(
        module,
        x_train[:4],
        (x_train, y_train),
        {"pixels": x_test, "labels": y_test},
        work / f"{name}-bundle",
        qat=QAT,
        config=SearchConfig(metric="accuracy", max_drop=0.005, objective="latency", threads=1),
        input_names=["pixels"],
        output_names=["logits"],
        progress=progress,
        on_epoch=lambda e: epochs.append(
            {"epoch": e.epoch, "loss": round(e.loss, 4), "seconds": round(e.seconds, 2)}
        ),
    )
    run_s = time.perf_counter() - t0
    search = result.result
    rows: dict[str, dict[str, Any]] = {}
    for cand in [search.baseline, *search.candidates]:
        ev = cand.evaluation
        rows[cand.name] = {
            "status": cand.status,
            "reason": cand.remark,
            "accuracy": None if ev is None else round(ev.metrics["accuracy"], 4),
            "drop": None if cand.drop is None else round(cand.drop, 4),
            "within_budget": cand.within_budget,
            "size_bytes": None if ev is None else ev.size_bytes,
            "search_latency_ms": None if ev is None else round(cand.latency_ms, 4),
        }
    ptq = [c for c in search.candidates if c.name != "qat-int8" and c.evaluation is not None]
    best_ptq = max(ptq, key=lambda c: c.evaluation.metrics["accuracy"])  # type: ignore[union-attr]
    control = _finetuned(module, x_train, y_train, kept / "float-finetuned.onnx")
    timed = {
        "float": kept / "original.onnx",
        f"ptq ({best_ptq.name})": kept / f"{best_ptq.name}.onnx",
        "qat-int8": kept / "qat-int8.onnx",
    }
    lat = compare_latency(list(timed.values()), {"pixels": x_test[:1]}, threads=1, rounds=ROUNDS)
    qat = search.candidates[-1]
    return {
        "width": width,
        "params": int(sum(p.numel() for p in module.parameters())),
        "float_train_seconds": round(train_s, 1),
        "qat_torch_seconds": round(run_s, 1),
        "load_before": load_before,
        "load_after": _load(),
        "chosen": search.chosen.name,
        "message": search.message,
        "rows": rows,
        "float_finetuned_accuracy": _accuracy(control, x_test, y_test),
        "qat_epochs": epochs,
        "qat_ranges": {k: v for k, v in qat.infos[0].items() if k != "epochs"} if qat.infos else {},
        "side_by_side_ms": {k: round(v, 4) for k, v in zip(timed, lat, strict=True)},
        "side_by_side_rounds": ROUNDS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-qat-") as tmp:
        for name in args.models.split(","):
            results[name] = bench_model(name, MODELS[name], Path(tmp))
            r = results[name]
            print(f"\n{name}: chosen {r['chosen']} ({r['message']})")
            for row, v in r["rows"].items():
                print(
                    f"  {row:34s} acc {v['accuracy']}  drop {v['drop']}  size {v['size_bytes']}"
                    f"  {v['status']} {v['reason'][:60]}"
                )
            print(f"  float fine-tuned (control): acc {r['float_finetuned_accuracy']}")
            print(f"  side by side: {r['side_by_side_ms']}")
    path = write(
        "qat",
        {
            "qat": {"epochs": QAT.epochs, "lr": QAT.lr, "batch_size": QAT.batch_size},
            "max_drop": 0.005,
            "models": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
