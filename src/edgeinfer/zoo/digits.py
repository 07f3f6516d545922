"""Digits CNN: a small convolutional network trained on scikit-learn's handwritten digits.

The digits set holds 1,797 real, labelled 8x8 grey-scale images (a copy of the UCI
optical-recognition test set). :func:`load_data` gives a deterministic, stratified split;
:func:`train` fits :func:`make_cnn` in a few seconds on one CPU core to about 99% held-out
accuracy; :func:`build` makes an edgeinfer bundle (``pixels`` float32 [N,1,8,8] in [0,1] ->
``logits`` float32 [N,10]) with a golden sample, labels and the held-out accuracy.

The network is a plain ``torch.nn.Sequential`` of named layers (``conv1``, ``bn1``,
``relu1``, ...), so it also serves static INT8 quantization, split computing (cut points
between blocks) and distillation (``make_cnn(width=4)`` is a narrower student of the same
shape). The trained ONNX model is cached in ``cache_dir()/zoo/digits/`` keyed by seed,
epochs, width and :data:`CODE_VERSION`, so every build after the first is instant and
needs neither torch nor scikit-learn's training code.

>>> from edgeinfer import zoo
>>> bundle = zoo.digits.build("bundles/digits")          # doctest: +SKIP
>>> bundle.manifest.metrics["accuracy"]                   # doctest: +SKIP
0.9956
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.zoo._common import ZooError, read_json, require, write_json, zoo_cache
from edgeinfer.zoo._torch import export, import_torch, seeded, threads

__all__ = [
    "CODE_VERSION",
    "DEFAULT_EPOCHS",
    "LABELS",
    "NAME",
    "accuracy",
    "build",
    "export_onnx",
    "load_data",
    "make_cnn",
    "model_path",
    "train",
]

NAME = "digits-cnn"
CODE_VERSION = 1  # bump when the data, network or training changes: invalidates the cache
DEFAULT_EPOCHS = 20
DEFAULT_WIDTH = 16  # channels of the first conv layer; later layers have 2x and 4x
LABELS = tuple(str(d) for d in range(10))
_BATCH = 64
_LR = 3e-3  # Adam learning rate


def load_data(
    seed: int = 0, test_size: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 [N,1,8,8] in [0,1], int64 labels.

    The split is stratified by label and depends only on ``seed`` and ``test_size``.
    """
    if not 0.0 < test_size < 1.0:
        raise ZooError(f"test_size must be between 0 and 1 (exclusive), got {test_size!r}")
    datasets = require("sklearn.datasets", "scikit-learn", "sklearn", "The digits data set")
    selection = require("sklearn.model_selection", "scikit-learn", "sklearn", "The digits split")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = selection.train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_test),
    )


def make_cnn(width: int = DEFAULT_WIDTH) -> Any:
    """The (untrained) network: three conv blocks and a two-layer classifier head.

    ``width=16`` gives about 41k parameters. Input [N,1,8,8] -> logits [N,10].
    """
    torch = import_torch("The digits CNN")
    nn = torch.nn
    if not isinstance(width, int) or width < 1:
        raise ZooError(f"width must be a positive integer, got {width!r}")
    w1, w2, w3 = width, 2 * width, 4 * width
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, w1, 3, padding=1)),
                ("bn1", nn.BatchNorm2d(w1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(w1, w2, 3, padding=1)),
                ("bn2", nn.BatchNorm2d(w2)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),  # 8x8 -> 4x4
                ("conv3", nn.Conv2d(w2, w3, 3, padding=1)),
                ("bn3", nn.BatchNorm2d(w3)),
                ("relu3", nn.ReLU()),
                ("pool3", nn.MaxPool2d(2)),  # 4x4 -> 2x2
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(w3 * 4, 64)),
                ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(64, 10)),
            ]
        )
    )


def train(epochs: int = DEFAULT_EPOCHS, seed: int = 0, *, width: int = DEFAULT_WIDTH) -> Any:
    """Train :func:`make_cnn` on the training split; returns the module in eval mode.

    Deterministic for a given ``seed`` (on the same machine and torch build). Small random
    shifts of up to one pixel augment the training images.
    """
    torch = import_torch("Training the digits CNN")
    if not isinstance(epochs, int) or epochs < 1:
        raise ZooError(f"epochs must be a positive integer, got {epochs!r}")
    x_train, y_train, _, _ = load_data(seed)
    with threads():
        gen = seeded(seed)
        model = make_cnn(width)
        x = torch.from_numpy(x_train)
        y = torch.from_numpy(y_train)
        opt = torch.optim.Adam(model.parameters(), lr=_LR)
        steps = epochs * ((len(x) + _BATCH - 1) // _BATCH)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR, total_steps=steps)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), _BATCH):
                idx = order[start : start + _BATCH]
                xb = _shift(torch, x[idx], gen)
                opt.zero_grad()
                loss = loss_fn(model(xb), y[idx])
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


def _shift(torch: Any, xb: Any, gen: Any) -> Any:
    """Shift each image by up to one pixel in x and y (zero fill)."""
    padded = torch.nn.functional.pad(xb, (1, 1, 1, 1))
    dy, dx = (int(v) for v in torch.randint(0, 3, (2,), generator=gen))
    return padded[:, :, dy : dy + 8, dx : dx + 8]


def export_onnx(module: Any, path: str | os.PathLike[str]) -> Path:
    """Export a trained digits network to ONNX (``pixels`` [batch,1,8,8] -> ``logits``).

    The batch axis is dynamic; ONNX Runtime's output is checked against torch's.
    """
    torch = import_torch("Exporting the digits CNN")
    x_train, _, _, _ = load_data()
    sample = torch.from_numpy(x_train[:4])
    return export(
        module,
        (sample,),
        Path(path),
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
    )


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model file, bundle or loaded ``edgeinfer.Model`` on (x, y)."""
    from edgeinfer.runtime.model import Model, load

    loaded = model if isinstance(model, Model) else load(model, providers=["cpu"])
    try:
        logits = loaded.predict({"pixels": x})["logits"]
    finally:
        if loaded is not model:
            loaded.close()
    return float(np.mean(logits.argmax(axis=1) == y))


def model_path(epochs: int = DEFAULT_EPOCHS, seed: int = 0, *, width: int = DEFAULT_WIDTH) -> Path:
    """The trained model's ONNX file in the cache; trains and exports it on first use."""
    key = f"s{seed}-e{epochs}-w{width}-v{CODE_VERSION}"
    onnx_path = zoo_cache("digits") / f"{NAME}-{key}.onnx"
    meta_path = onnx_path.with_suffix(".json")
    if onnx_path.is_file() and read_json(meta_path) is not None:
        return onnx_path
    module = train(epochs, seed, width=width)
    params = int(sum(p.numel() for p in module.parameters()))
    export_onnx(module, onnx_path)
    write_json(meta_path, {"params": params, "epochs": epochs, "seed": seed, "width": width})
    return onnx_path


def build(
    out_dir: str | os.PathLike[str],
    version: int = 1,
    epochs: int | None = None,
    seed: int = 0,
    *,
    width: int = DEFAULT_WIDTH,
    overwrite: bool = False,
) -> Bundle:
    """Train (or take from the cache) the digits CNN and make a bundle of it in ``out_dir``.

    The bundle carries labels ``"0"``..``"9"``, a golden sample of eight held-out images,
    metrics ``accuracy`` (held-out, measured with ONNX Runtime) and ``params``, and the
    recipe that made it.
    """
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    path = model_path(epochs, seed, width=width)
    meta = read_json(path.with_suffix(".json")) or {}
    _, _, x_test, y_test = load_data(seed)
    acc = accuracy(path, x_test, y_test)
    return Bundle.create(
        path,
        out_dir,
        name=NAME,
        version=version,
        golden_inputs={"pixels": x_test[:8]},
        labels=LABELS,
        metrics={"accuracy": round(acc, 6), "params": meta.get("params"), "test_size": len(y_test)},
        recipe={
            "trainer": "edgeinfer.zoo.digits",
            "epochs": epochs,
            "seed": seed,
            "width": width,
            "code_version": CODE_VERSION,
            "data": "sklearn.datasets.load_digits, stratified 75/25 split",
        },
        source=f"{NAME}.onnx",
        overwrite=overwrite,
    )
