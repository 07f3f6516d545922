"""Sensor anomaly detection: an autoencoder on 3-axis vibration windows of a rotating machine.

The data is synthetic but shaped like what an accelerometer on a motor bearing housing
reports (:class:`VibrationConfig`): 128-sample windows at 1.6 kHz of the shaft's running
speed and its harmonics, a gear-mesh tone, gravity on the z axis and sensor noise. Faults
(label 1) are the classic ones a condition monitor looks for:

- ``bearing``: an outer-race defect; impacts at the ball-pass frequency (3.58x shaft
  speed) that ring the housing's resonance (~500 Hz) on the radial axes;
- ``imbalance``: a much stronger 1x component;
- ``looseness``: strong 2x and 3x harmonics;
- ``overspeed``: the shaft running well outside its normal speed band.

:func:`train` fits a small fully connected autoencoder on normal windows only; a window's
anomaly score is its mean squared reconstruction error (in normalized units), and the
alarm threshold is a high quantile of the scores of held-out normal windows. The exported
model maps ``vibration`` float32 [N,3,128] (g) to ``reconstruction`` [N,3,128] (g) and
``score`` [N]; :func:`build` records ROC AUC, precision, recall and F1 at the threshold on
a labelled held-out set.

>>> from edgeinfer import zoo
>>> bundle = zoo.sensor.build("bundles/sensor")           # doctest: +SKIP
>>> bundle.manifest.metrics["roc_auc"] > 0.9              # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.zoo._common import ZooError
from edgeinfer.zoo._torch import export, import_torch, seeded, threads

__all__ = [
    "FAULTS",
    "NAME",
    "SensorData",
    "VibrationConfig",
    "build",
    "evaluate",
    "export_onnx",
    "generate",
    "load_data",
    "roc_auc",
    "train",
]

NAME = "sensor-autoencoder"
FAULTS = ("bearing", "imbalance", "looseness", "overspeed")
DEFAULT_EPOCHS = 20
THRESHOLD_QUANTILE = 0.99  # of held-out normal scores: about 1% false alarms
_BATCH = 128
_LR = 2e-3  # Adam learning rate


@dataclass(frozen=True)
class VibrationConfig:
    """How the synthetic machine and its accelerometer behave."""

    sample_rate: float = 1600.0  # Hz
    window: int = 128  # samples per window (80 ms at 1.6 kHz)
    shaft_hz: tuple[float, float] = (23.0, 27.0)  # normal running speed band, Hz
    harmonics_g: tuple[float, float, float] = (0.05, 0.02, 0.01)  # 1x, 2x, 3x amplitude, g
    gear_teeth: int = 17  # gear-mesh tone at teeth x shaft speed
    gear_g: float = 0.008  # gear-mesh amplitude, g
    noise_g: float = 0.01  # sensor noise standard deviation, g
    bpfo_ratio: float = 3.58  # outer-race ball-pass frequency / shaft speed
    resonance_hz: float = 500.0  # housing resonance excited by bearing impacts
    gravity_axis: int = 2  # the axis that reads 1 g at rest (z)


@dataclass(frozen=True)
class SensorData:
    """Windows float32 [N,3,window] in g; labels int64 (1: fault); fault names per window."""

    x_train: np.ndarray  # normal windows only
    x_val: np.ndarray  # normal windows only: for the threshold
    x_test: np.ndarray  # normal and faulty
    y_test: np.ndarray
    fault_test: tuple[str, ...]  # "normal" or one of FAULTS


def generate(
    n: int,
    fault: str | None = None,
    seed: int = 0,
    config: VibrationConfig = VibrationConfig(),
) -> np.ndarray:
    """``n`` windows float32 [n,3,window] in g: normal (``fault=None``) or with a fault."""
    if fault is not None and fault not in FAULTS:
        raise ZooError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)} or None")
    c = config
    rng = np.random.default_rng(seed)
    t = np.arange(c.window) / c.sample_rate  # s
    lo, hi = c.shaft_hz
    overspeed = fault == "overspeed"
    shaft = rng.uniform(hi * 1.25, hi * 1.45, n) if overspeed else rng.uniform(lo, hi, n)
    gain = np.ones((n, 3, 3))  # window, axis, harmonic
    if fault == "imbalance":
        gain[:, :2, 0] *= rng.uniform(3.0, 5.0, (n, 1))
    elif fault == "looseness":
        gain[:, :, 1:] *= rng.uniform(3.0, 5.0, (n, 1, 1))
    x = np.zeros((n, 3, c.window))
    for k, amp in enumerate(c.harmonics_g, start=1):
        a = amp * gain[:, :, k - 1] * rng.uniform(0.8, 1.2, (n, 3))
        phase = rng.uniform(0, 2 * np.pi, (n, 3))
        x += a[..., None] * np.sin(2 * np.pi * k * shaft[:, None, None] * t + phase[..., None])
    mesh = c.gear_teeth * shaft[:, None, None]
    x += c.gear_g * np.sin(2 * np.pi * mesh * t + rng.uniform(0, 2 * np.pi, (n, 3, 1)))
    if fault == "bearing":
        x += _impacts(rng, shaft, t, c)
    x += rng.normal(0.0, c.noise_g, x.shape)
    x[:, c.gravity_axis] += 1.0
    return x.astype(np.float32)


def _impacts(
    rng: np.random.Generator, shaft: np.ndarray, t: np.ndarray, c: VibrationConfig
) -> np.ndarray:
    """Decaying resonance bursts at the outer-race ball-pass frequency, radial axes."""
    n = len(shaft)
    out = np.zeros((n, 3, len(t)))
    period = 1.0 / (c.bpfo_ratio * shaft)  # s between impacts
    start = rng.uniform(0, 1, n) * period
    amp = rng.uniform(0.06, 0.2, n)  # g
    tau = 0.002  # s: how fast the housing rings down
    for i in range(n):
        for t0 in np.arange(start[i], t[-1], period[i]):
            dt = t - t0
            ring = np.where(dt >= 0, np.exp(-np.maximum(dt, 0) / tau), 0.0)
            burst = amp[i] * ring * np.sin(2 * np.pi * c.resonance_hz * dt)
            out[i, 0] += burst
            out[i, 1] += 0.6 * burst
    return out


def load_data(
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 500,
    n_test_normal: int = 600,
    n_test_fault: int = 100,  # per fault type
    config: VibrationConfig = VibrationConfig(),
) -> SensorData:
    """Normal training and validation windows, and a labelled test set with every fault."""
    x_train = generate(n_train, None, seed * 1000 + 1, config)
    x_val = generate(n_val, None, seed * 1000 + 2, config)
    parts = [generate(n_test_normal, None, seed * 1000 + 3, config)]
    names = ["normal"] * n_test_normal
    for i, fault in enumerate(FAULTS):
        parts.append(generate(n_test_fault, fault, seed * 1000 + 10 + i, config))
        names += [fault] * n_test_fault
    x_test = np.concatenate(parts)
    y_test = np.array([0 if f == "normal" else 1 for f in names], dtype=np.int64)
    return SensorData(x_train, x_val, x_test, y_test, tuple(names))


def _autoencoder(torch: Any, mean: np.ndarray, std: float, window: int) -> Any:
    nn = torch.nn
    size = 3 * window

    class VibrationAutoencoder(nn.Module):  # type: ignore[misc,name-defined]
        """Normalize, squeeze through a 16-wide bottleneck, expand, and score the error."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1))
            self.register_buffer("scale", torch.tensor(1.0 / std, dtype=torch.float32))
            self.encoder = nn.Sequential(
                nn.Flatten(), nn.Linear(size, 128), nn.ReLU(), nn.Linear(128, 16), nn.ReLU()
            )
            self.decoder = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, size))

        def forward(self, x: Any) -> tuple[Any, Any]:
            z = (x - self.mean) * self.scale
            r = self.decoder(self.encoder(z)).view_as(x)
            score = ((r - z) ** 2).mean(dim=(1, 2))
            return r / self.scale + self.mean, score

    return VibrationAutoencoder()


def train(data: SensorData | None = None, epochs: int = DEFAULT_EPOCHS, seed: int = 0) -> Any:
    """Train the autoencoder on normal windows; returns the module in eval mode.

    The module maps windows [N,3,window] (g) to ``(reconstruction, score)``.
    """
    torch = import_torch("Training the sensor autoencoder")
    if not isinstance(epochs, int) or epochs < 1:
        raise ZooError(f"epochs must be a positive integer, got {epochs!r}")
    data = data if data is not None else load_data(seed)
    x_np = data.x_train
    mean = x_np.mean(axis=(0, 2))
    std = float((x_np - mean[None, :, None]).std())
    with threads():
        gen = seeded(seed)
        model = _autoencoder(torch, mean, std, x_np.shape[-1])
        x = torch.from_numpy(x_np)
        opt = torch.optim.Adam(model.parameters(), lr=_LR)
        steps = epochs * ((len(x) + _BATCH - 1) // _BATCH)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR, total_steps=steps)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), _BATCH):
                _, score = model(x[order[start : start + _BATCH]])
                loss = score.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


def export_onnx(module: Any, path: str | os.PathLike[str]) -> Path:
    """Export the autoencoder: ``vibration`` [batch,3,128] -> ``reconstruction``, ``score``."""
    torch = import_torch("Exporting the sensor autoencoder")
    sample = torch.from_numpy(generate(4, None, seed=99))
    return export(
        module,
        (sample,),
        Path(path),
        input_names=["vibration"],
        output_names=["reconstruction", "score"],
        dynamic_axes={
            "vibration": {0: "batch"},
            "reconstruction": {0: "batch"},
            "score": {0: "batch"},
        },
    )


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the chance a fault scores above a normal window)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ZooError("ROC AUC needs both normal and faulty windows")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]  # average rank over ties
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, and precision, recall and F1 of the alarm ``score > threshold``."""
    alarm = np.asarray(scores) > threshold
    truth = np.asarray(labels).astype(bool)
    tp = int((alarm & truth).sum())
    precision = tp / max(int(alarm.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {
        "roc_auc": round(roc_auc(scores, labels), 6),
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
    }


def build(
    out_dir: str | os.PathLike[str],
    version: int = 1,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    *,
    overwrite: bool = False,
) -> Bundle:
    """Train the autoencoder, export it, and make a bundle with its threshold and metrics.

    Metrics: ``threshold`` (on ``score``), ``roc_auc``, ``precision``, ``recall``, ``f1``
    on the labelled held-out set (measured with ONNX Runtime), and per-fault recall.
    """
    import tempfile

    from edgeinfer.runtime.model import load

    data = load_data(seed)
    module = train(data, epochs, seed)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-sensor-") as tmp:
        path = export_onnx(module, Path(tmp) / f"{NAME}.onnx")
        with load(path, providers=["cpu"]) as model:
            val = model.predict(data.x_val, outputs=["score"])["score"]
            test = model.predict(data.x_test, outputs=["score"])["score"]
        threshold = float(np.quantile(val, THRESHOLD_QUANTILE))
        metrics: dict[str, Any] = {"threshold": threshold, **evaluate(test, data.y_test, threshold)}
        faults = np.array(data.fault_test)
        for fault in FAULTS:
            metrics[f"recall_{fault}"] = round(float(np.mean(test[faults == fault] > threshold)), 6)
        metrics["params"] = int(sum(p.numel() for p in module.parameters()))
        golden = np.concatenate([data.x_test[:4], data.x_test[-4:]])  # normal and faulty
        return Bundle.create(
            path,
            out_dir,
            name=NAME,
            version=version,
            golden_inputs={"vibration": golden},
            metrics=metrics,
            recipe={
                "trainer": "edgeinfer.zoo.sensor",
                "epochs": epochs,
                "seed": seed,
                "threshold_quantile": THRESHOLD_QUANTILE,
                "data": "synthetic 3-axis vibration, 128 samples at 1.6 kHz",
            },
            source=f"{NAME}.onnx",
            overwrite=overwrite,
        )
