"""Knowledge distillation: train a smaller PyTorch student to imitate any runnable model.

The teacher is whatever edgeinfer can run (an ONNX or LiteRT file, a bundle):
``Model.predict`` supplies its outputs on unlabeled inputs, and the student learns to
reproduce them. No labels are needed. Losses:

* ``kl``: KL divergence between temperature-softened softmaxes of teacher and student
  logits (Hinton et al.), for classifiers;
* ``cosine``: 1 - cosine similarity, for embeddings;
* ``mse``: mean squared error, for regression or anything else;
* ``auto``: ``cosine`` if the teacher's output rows have unit norm, ``kl`` if they are
  2-D scores over several classes, else ``mse``.

The student is exported with the teacher's input and output names (a drop-in replacement)
and checked against torch; the search and ``edgeinfer distill`` then evaluate it like any
other candidate. ``student`` is a ``torch.nn.Module`` or a zero-argument factory of one;
its ``forward`` takes the teacher's inputs in order and returns the matched output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.optimize.data import DataSource, load_dataset
from edgeinfer.optimize.passes.base import DATA, PassResult, require_choice

__all__ = ["NAME", "DistillConfig", "mlp_student", "pick_loss", "run", "soft_targets"]

NAME = "distill"
Loss = Literal["auto", "kl", "mse", "cosine"]


@dataclass(frozen=True)
class DistillConfig:
    """What to train, on what, and how long."""

    student: Any = field(default=None, metadata=DATA, compare=False)  # nn.Module or factory
    data: DataSource = field(default=None, metadata=DATA, compare=False, repr=False)
    output: str | None = None  # teacher output to imitate (default: its first float output)
    loss: Loss = "auto"
    temperature: float = 2.0  # softening of the logits for the "kl" loss
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3  # Adam learning rate (one-cycle schedule)
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = 2  # torch intra-op threads while training (None: torch's default)

    def __post_init__(self) -> None:
        require_choice("distillation loss", self.loss, ("auto", "kl", "mse", "cosine"))
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be >= 1")
        if self.temperature <= 0 or self.lr <= 0:
            raise InputError("temperature and lr must be > 0")


def soft_targets(teacher: Any, arrays: dict[str, np.ndarray], output: str, batch: int) -> Any:
    """The teacher's ``output`` on every sample, computed in batches."""
    n = len(next(iter(arrays.values())))
    parts = [
        teacher.predict({k: v[i : i + batch] for k, v in arrays.items()}, outputs=[output])[output]
        for i in range(0, n, batch)
    ]
    return np.concatenate(parts)


def pick_loss(targets: np.ndarray) -> str:
    """The ``auto`` choice for teacher outputs ``targets`` (see module docs)."""
    rows = targets.reshape(len(targets), -1).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    if rows.shape[1] > 1 and np.allclose(norms, 1.0, atol=1e-3):
        return "cosine"
    if targets.ndim == 2 and targets.shape[1] > 1:
        return "kl"
    return "mse"


def mlp_student(n_in: int, n_out: int, hidden: tuple[int, ...] = (64,)) -> Any:
    """A small MLP student: flattens its input, ``hidden`` ReLU layers, ``n_out`` outputs."""
    import torch

    layers: list[Any] = [torch.nn.Flatten()]
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def _loss_fn(torch: Any, kind: str, temperature: float) -> Callable[[Any, Any], Any]:
    f = torch.nn.functional
    if kind == "kl":
        t = temperature

        def kl(student: Any, teacher: Any) -> Any:
            log_p = f.log_softmax(student / t, dim=-1)
            q = f.softmax(teacher / t, dim=-1)
            return f.kl_div(log_p, q, reduction="batchmean") * t * t

        return kl
    if kind == "cosine":
        return lambda s, t_: (1.0 - f.cosine_similarity(s.flatten(1), t_.flatten(1))).mean()
    return lambda s, t_: f.mse_loss(s, t_)


def run(model: Path, config: DistillConfig, out_path: Path) -> PassResult:
    """Train ``config.student`` to imitate ``model`` on ``config.data``; export it."""
    from edgeinfer.convert.torch import import_torch, torch_to_onnx
    from edgeinfer.runtime.model import load

    torch = import_torch("Knowledge distillation")
    if config.student is None or config.data is None:
        raise InputError("distillation needs student= (a torch module or factory) and data=")
    teacher = load(model, providers=["cpu"], threads=config.threads)
    try:
        data = load_dataset(config.data, teacher.inputs, what="distillation data")
        floats = [s.name for s in teacher.outputs if s.dtype.startswith("float")]
        output = config.output or (floats[0] if floats else None)
        if output is None or output not in {s.name for s in teacher.outputs}:
            names = ", ".join(s.name for s in teacher.outputs)
            raise InputError(
                f"teacher output {output!r} not found or not float; choose one of {names}"
            )
        arrays = dict(data.arrays)
        targets = soft_targets(teacher, arrays, output, 256)
        input_names = [s.name for s in teacher.inputs]
    finally:
        teacher.close()
    kind = pick_loss(targets) if config.loss == "auto" else config.loss
    student = (
        config.student()
        if callable(config.student) and not isinstance(config.student, torch.nn.Module)
        else config.student
    )
    if not isinstance(student, torch.nn.Module):
        raise InputError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        losses = _train(torch, student, arrays, input_names, targets, kind, config)
    finally:
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - start
    student.eval()
    example = tuple(torch.from_numpy(np.ascontiguousarray(arrays[n][:4])) for n in input_names)
    report = torch_to_onnx(
        student, example, out_path, input_names=input_names, output_names=[output]
    )
    info = {
        "loss": kind,
        "epochs": config.epochs,
        "samples": len(data),
        "final_loss": round(losses[-1], 6),
        "first_epoch_loss": round(losses[0], 6),
        "train_seconds": round(seconds, 2),
        "student_params": int(sum(p.numel() for p in student.parameters())),
        "output": output,
        "export_max_abs_error": report.max_abs_error,
    }
    return PassResult(Path(out_path), info)


def _train(
    torch: Any,
    student: Any,
    arrays: dict[str, np.ndarray],
    input_names: list[str],
    targets: np.ndarray,
    kind: str,
    config: DistillConfig,
) -> list[float]:
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    xs = [torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in input_names]
    ys = torch.from_numpy(np.ascontiguousarray(targets.astype(np.float32)))
    n = len(ys)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    opt = torch.optim.Adam(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = _loss_fn(torch, kind, config.temperature)
    student.train()
    losses = []
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad()
            out = student(*(x[idx] for x in xs))
            if out.shape != ys[idx].shape:
                raise InputError(
                    f"student output shape {list(out.shape)} does not match the teacher's "
                    f"{list(ys[idx].shape)}"
                )
            loss = loss_fn(out, ys[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    return losses
