"""The corpus models edgeinfer's own converters make, and the plain-runtime reference.

- ``sklearn-forest``: StandardScaler + RandomForestClassifier on scikit-learn's breast cancer
  data, converted by ``edgeinfer.convert.sklearn`` (tree ensembles in ``ai.onnx.ml``);
- ``sklearn-gbr``: MinMaxScaler + GradientBoostingRegressor on the diabetes data;
- ``torch-cnn``: a small CNN trained for a few seconds on the 8x8 digits, ``convert.torch``;
- ``torch-transformer``: a two-layer byte-level transformer encoder over real sentences
  (dynamic batch and sequence), ``convert.torch``.

:func:`reference` runs a model file with plain ONNX Runtime or LiteRT, never through
edgeinfer, so every command's answer is checked against the runtime itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "SEQUENCE",
    "build_cnn",
    "build_forest",
    "build_gbr",
    "build_transformer",
    "reference",
    "tokens",
]

SEQUENCE = 32  # tokens per sentence fed to the transformer (bytes, padded with 0)


def build_forest(out: Path) -> Path:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeinfer.convert.sklearn import sklearn_to_onnx

    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(
        StandardScaler(), RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    )
    model.fit(x[::2].astype(np.float32), y[::2])
    return sklearn_to_onnx(model, out, sample=x[1:41:2].astype(np.float32)).path


def build_gbr(out: Path) -> Path:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    from edgeinfer.convert.sklearn import sklearn_to_onnx

    x, y = load_diabetes(return_X_y=True)
    model = make_pipeline(
        MinMaxScaler(), GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0)
    )
    model.fit(x[::2].astype(np.float32), y[::2])
    return sklearn_to_onnx(model, out, sample=x[1:41:2].astype(np.float32), atol=1e-2).path


def build_cnn(out: Path) -> Path:
    import torch
    from sklearn.datasets import load_digits

    from edgeinfer.convert.torch import torch_to_onnx

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    images = torch.from_numpy((x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    labels = torch.from_numpy(y)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only contend on 2 cores
    try:
        for _ in range(25):  # full-batch steps on the even rows: ~90% on the odd ones
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(images[::2]), labels[::2])
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return torch_to_onnx(net, images[1:9:2].numpy(), out, input_names=["pixels"]).path


def tokens(texts: list[str]) -> np.ndarray:
    """Sentences -> int64 [N, SEQUENCE] byte ids (+1, 0 pads)."""
    out = np.zeros((len(texts), SEQUENCE), np.int64)
    for i, text in enumerate(texts):
        data = text.encode("utf-8")[:SEQUENCE]
        out[i, : len(data)] = np.frombuffer(data, np.uint8).astype(np.int64) + 1
    return out


def build_transformer(out: Path) -> Path:
    import torch

    from edgeinfer.convert.torch import torch_to_onnx
    from edgeinfer.zoo._sentences import sentences

    torch.manual_seed(0)

    class ByteEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(257, 32)
            self.position = torch.nn.Parameter(torch.randn(1, 128, 32) * 0.02)
            layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(32, 16)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.embed(ids) + self.position[:, : ids.shape[1]]
            return self.head(self.encoder(h).mean(dim=1))

    example = tokens(sentences(4, seed=1))
    return torch_to_onnx(
        ByteEncoder(),
        example,
        out,
        input_names=["ids"],
        output_names=["embedding"],
        dynamic_axes={"ids": {1: "sequence"}},
    ).path


def reference(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the model file on ``feeds`` from plain ONNX Runtime or LiteRT."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=1)
        details = interp.get_input_details()
        for d in details:
            interp.resize_tensor_input(d["index"], list(np.shape(feeds[d["name"]])))
        interp.allocate_tensors()
        for d in details:
            interp.set_tensor(d["index"], np.asarray(feeds[d["name"]], d["dtype"]))
        interp.invoke()
        return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))
