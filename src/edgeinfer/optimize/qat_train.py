"""Quantization-aware training of a torch module with torch.ao's FX graph mode.

The training half of :mod:`.qat_torch`: :func:`prepare` makes a fake-quantized copy
(``prepare_qat_fx``: Conv+BN(+ReLU) fused, fake quantizers that quantize as ONNX Runtime's
static QDQ INT8 does: uint8 asymmetric activations, int8 symmetric per-channel weights in
[-127, 127]) and starts its observers on calibration data; :func:`fit` fine-tunes it (the
last of two or more epochs with observers and batch-norm statistics frozen, as torch's QAT
recipe does); :func:`learned_ranges` reads the scales and zero points it learned and the
values each fake quantizer saw on a probe batch (what :mod:`.qat_ranges` places in the ONNX
model); :func:`float_copy` is the trained module in float, batch norm folded, for export.

torch.ao's eager and FX quantization are deprecated in favour of torchao's PT2E flow, which
torch 2.13 no longer ships itself; FX graph mode is what torch still has. Its deprecation
warnings are silenced here, once per call.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.errors import OptimizeError
from edgeinfer.optimize.passes.static_int8 import StaticInt8Config
from edgeinfer.optimize.qat_ranges import Learned, LearnedRangesConfig

__all__ = [
    "EpochStats",
    "QATConfig",
    "QATStep",
    "fit",
    "float_copy",
    "learned_ranges",
    "prepare",
    "tensors",
    "torch_threads",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QATConfig:
    """How the fake-quantized copy is fine-tuned.

    ``threads`` is 1 by default: edge-sized networks run many small fake-quantize operators
    a step, and on a machine with other work a second OpenMP thread waiting for a busy
    core made an epoch of the digits CNN 15x slower (14 s against 0.9 s). Give ``None``
    (torch's own setting) or more threads for large modules on a quiet machine.
    """

    epochs: int = 2  # passes over the training data
    lr: float = 1e-4  # Adam learning rate (fine-tuning: a tenth of a usual training rate)
    batch_size: int = 64  # samples per step
    loss: Literal["auto", "cross_entropy", "mse"] = "auto"  # auto: by the labels' dtype
    seed: int = 0  # shuffling, and anything random in the module (dropout)
    threads: int | None = 1  # torch threads while training (None: torch's setting)

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise InputError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads must be an integer >= 1 or None, got {self.threads!r}")
        if self.loss not in ("auto", "cross_entropy", "mse"):
            raise InputError(
                f"loss {self.loss!r} is not supported; expected 'auto', 'cross_entropy' or 'mse'"
            )


@dataclass(frozen=True)
class EpochStats:
    """One finished QAT epoch."""

    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss over the epoch
    seconds: float
    frozen: bool  # observers and batch-norm statistics were frozen in this epoch


@dataclass(frozen=True)
class QATStep:
    """The recipe step of a QAT candidate: how it was trained, and on how many samples."""

    training: QATConfig
    train_samples: int
    framework: str = "torch.ao FX graph mode (prepare_qat_fx)"

    @property
    def epochs(self) -> int:
        return self.training.epochs


@contextlib.contextmanager
def torch_threads(torch: Any, n: int | None) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads (None: as it is), restoring the setting after."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _torch_quiet() -> Iterator[None]:
    # torch.ao warns on every call that it is deprecated (see the module docs).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _ao() -> Any:
    """``torch.ao.quantization`` (and its ``quantize_fx``), untyped like torch elsewhere here."""
    with _torch_quiet():
        ao = importlib.import_module("torch.ao.quantization")
        importlib.import_module("torch.ao.quantization.quantize_fx")
    return ao


def _loss(torch: Any, kind: str, labels: np.ndarray, out_shape: tuple[int, ...]) -> Any:
    """The loss function, checked against the labels and the module's output shape."""
    integer = np.issubdtype(labels.dtype, np.integer)
    if kind == "auto":
        kind = "cross_entropy" if integer else "mse"
    if kind == "cross_entropy":
        classes = out_shape[-1] if len(out_shape) == 2 else 0
        if not integer or labels.ndim != 1 or not classes:
            raise InputError(
                f"cross-entropy needs integer class labels [N] and an output [N, classes]; got "
                f"labels {labels.dtype} {list(labels.shape)} and output {list(out_shape)}"
            )
        if labels.min() < 0 or labels.max() >= classes:
            raise InputError(
                f"training labels range over {labels.min()}..{labels.max()}; the output has "
                f"{classes} classes (0..{classes - 1})"
            )
        return torch.nn.CrossEntropyLoss()
    if tuple(labels.shape[1:]) != tuple(out_shape[1:]):
        raise InputError(
            f"mse targets have shape [N, {', '.join(map(str, labels.shape[1:]))}]; the output "
            f"is {list(out_shape)}"
        )
    return torch.nn.MSELoss()


def _qconfig(torch: Any) -> Any:
    """Fake quantizers that quantize as ONNX Runtime's static QDQ INT8 does."""
    ao = _ao()

    act = ao.FakeQuantize.with_args(
        observer=ao.MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    weight = ao.FakeQuantize.with_args(
        observer=ao.MovingAveragePerChannelMinMaxObserver,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    return ao.QConfigMapping().set_global(ao.QConfig(activation=act, weight=weight))


def _pick(torch: Any, value: Any, index: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    return value[index]


def tensors(torch: Any, data: Dataset, names: list[str], rows: Any) -> list[Any]:
    return [torch.from_numpy(np.ascontiguousarray(data.arrays[n][rows])) for n in names]


def prepare(
    torch: Any,
    module: Any,
    example: tuple[Any, ...],
    data: Dataset,
    calib: Dataset,
    names: list[str],
    out_index: int,
    cfg: QATConfig,
) -> tuple[Any, Any]:
    """The fake-quantized copy, observers started on ``calib``, and the loss (both checked
    before any long work: an untraceable module or labels that do not fit fail first)."""
    ao = _ao()

    try:
        with _torch_quiet():
            prepared = ao.quantize_fx.prepare_qat_fx(
                copy.deepcopy(module).train(), _qconfig(torch), example
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"torch.fx cannot trace {type(module).__name__} for quantization-aware training "
            f"(a forward with data-dependent control flow?): {first[:200]}"
        ) from exc
    with torch.no_grad(), _torch_quiet():
        prepared.eval().apply(ao.disable_fake_quant).apply(ao.enable_observer)
        for start in range(0, len(calib), cfg.batch_size):
            prepared(*tensors(torch, calib, names, slice(start, start + cfg.batch_size)))
        prepared.apply(ao.enable_fake_quant)
        out_shape = tuple(_pick(torch, prepared(*example), out_index).shape)
    return prepared, _loss(torch, cfg.loss, np.asarray(data.labels), out_shape)


def fit(
    torch: Any,
    prepared: Any,
    loss_fn: Any,
    data: Dataset,
    names: list[str],
    out_index: int,
    cfg: QATConfig,
    on_epoch: Callable[[EpochStats], None] | None,
) -> list[EpochStats]:
    """Train ``prepared`` in place; the last of two or more epochs runs frozen."""

    labels = torch.from_numpy(np.ascontiguousarray(data.labels))
    opt = torch.optim.Adam(prepared.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    stats: list[EpochStats] = []
    _epochs(
        torch, prepared, loss_fn, opt, gen, labels, data, names, out_index, cfg, stats, on_epoch
    )
    prepared.eval()
    return stats


def _epochs(
    torch: Any,
    prepared: Any,
    loss_fn: Any,
    opt: Any,
    gen: Any,
    labels: Any,
    data: Dataset,
    names: list[str],
    out_index: int,
    cfg: QATConfig,
    stats: list[EpochStats],
    on_epoch: Callable[[EpochStats], None] | None,
) -> None:
    ao = _ao()
    nniqat: Any = importlib.import_module("torch.ao.nn.intrinsic.qat")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # dropout and the like, without touching the caller's RNG
        for epoch in range(1, cfg.epochs + 1):
            frozen = cfg.epochs >= 2 and epoch == cfg.epochs
            prepared.train()
            if frozen:
                prepared.apply(ao.disable_observer).apply(nniqat.freeze_bn_stats)
            started, total, seen = time.perf_counter(), 0.0, 0
            order = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), cfg.batch_size):
                rows = order[start : start + cfg.batch_size].numpy()
                if len(rows) < 2:
                    continue  # batch norm cannot train on one sample
                opt.zero_grad()
                with _torch_quiet():
                    out = _pick(torch, prepared(*tensors(torch, data, names, rows)), out_index)
                loss = loss_fn(out, labels[rows])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
                seen += len(rows)
            mean = total / max(1, seen)
            if not math.isfinite(mean):
                raise OptimizeError(
                    f"quantization-aware training diverged in epoch {epoch} (loss {mean}); "
                    f"try a smaller lr than {cfg.lr:g}"
                )
            stat = EpochStats(epoch, cfg.epochs, mean, time.perf_counter() - started, frozen)
            stats.append(stat)
            log.info("QAT epoch %d/%d: loss %.4f (%.1f s)", epoch, cfg.epochs, mean, stat.seconds)
            if on_epoch:
                on_epoch(stat)


def learned_ranges(torch: Any, prepared: Any, probe: tuple[Any, ...]) -> LearnedRangesConfig:
    """The learned qparams, and the tensors each fake quantizer saw on ``probe``."""
    ao = _ao()

    quantizers = {n: m for n, m in prepared.named_modules() if isinstance(m, ao.FakeQuantizeBase)}
    weights = {n: m for n, m in quantizers.items() if n.endswith("weight_fake_quant")}
    with torch.no_grad(), _torch_quiet():
        # Weight qparams from the final weights (batch norm folded), not a moving average
        # that trails them: what ONNX Runtime computes from the exported weights.
        prepared.apply(ao.disable_observer)
        for fq in weights.values():
            fq.activation_post_process.reset_min_max_vals()
            ao.enable_observer(fq)
        prepared(*probe[:1])
        prepared.apply(ao.disable_observer)
    learned = {
        n: Learned(
            m.scale.detach().numpy().copy(),
            m.zero_point.detach().numpy().copy(),
            int(m.quant_min),
            int(m.quant_max),
        )
        for n, m in quantizers.items()
    }
    records: dict[str, list[np.ndarray]] = {n: [] for n in quantizers}
    hooks = [
        m.register_forward_hook(
            lambda mod, args, out, name=n: records[name].append(args[0].detach().numpy().copy())
        )
        for n, m in quantizers.items()
    ]
    try:
        with torch.no_grad(), _torch_quiet():
            prepared.apply(ao.disable_fake_quant)  # float values: what the float export computes
            prepared(*probe)
    finally:
        for h in hooks:
            h.remove()
    acts = {n: r for n, r in records.items() if n not in weights and r}
    wts = {n: records[n][0] for n in weights if records[n]}
    return LearnedRangesConfig(StaticInt8Config(), learned, acts, wts)


def float_copy(torch: Any, prepared: Any) -> Any:
    """The trained module in float: QAT modules to float (BN folded), fake quantizers gone."""
    ao = _ao()

    plain = copy.deepcopy(prepared)
    swaps = []
    for name, mod in plain.named_modules():
        if isinstance(mod, ao.FakeQuantizeBase) and not name.endswith("weight_fake_quant"):
            swaps.append((name, torch.nn.Identity()))
        elif hasattr(mod, "to_float") and hasattr(mod, "weight_fake_quant"):
            swaps.append((name, mod.to_float()))
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, attr, new)
    return plain.eval()
