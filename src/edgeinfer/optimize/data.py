"""Evaluation and calibration data: loaded once, checked against the model before any work.

A :class:`Dataset` holds one array per model input, all with the same number of samples on
axis 0, already converted to the dtypes the model takes (by the same
:class:`~edgeinfer.tensors.InputValidator` that guards ``Model.predict``), plus optional
labels. :func:`load_dataset` reads it from

* an ``.npz`` file (one array per input, named as the inputs; an extra array named
  ``labels`` is taken as the labels) or an ``.npy`` file (one-input models),
* a mapping name -> array, or one array for a one-input model,
* an iterable of feed dicts (batches), such as an ONNX Runtime ``CalibrationDataReader``,

and raises :class:`InputError` naming the mismatch (missing or unknown input, wrong dtype or
shape, ragged lengths, wrong number of labels, empty data, an input whose batch is on a
later axis). A rank-0 model input (Silero VAD's sample rate) is given as a scalar and fed
as is with every batch (:attr:`Dataset.scalars`). :func:`calibration_reader` turns a
dataset into the ``CalibrationDataReader`` ONNX Runtime's static quantizer reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import InputError
from edgeinfer.tensors import InputValidator, TensorSpec

__all__ = [
    "LABELS_KEY",
    "DataSource",
    "Dataset",
    "calibration_reader",
    "load_dataset",
    "load_labels",
    "model_specs",
]

LABELS_KEY = "labels"
DataSource = Any  # Dataset | path | Mapping[str, ndarray] | ndarray | Iterable[Mapping]


@dataclass(frozen=True)
class Dataset:
    """Validated model inputs (name -> array, samples on axis 0) and optional labels."""

    arrays: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None
    batch: int | None = None  # a fixed batch size the model requires (None: any)
    # Rank-0 model inputs (Silero VAD's sample rate): fed as given with every batch.
    scalars: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts of ``size`` samples (the model's fixed batch size, if it has one)."""
        step = self.batch or max(1, size)
        for start in range(0, len(self), step):
            yield {**{k: v[start : start + step] for k, v in self.arrays.items()}, **self.scalars}

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (whole fixed-size batches)."""
        return self.window(0, n)

    def window(self, start: int, n: int) -> Dataset:
        """``n`` samples from ``start`` (whole fixed-size batches)."""
        if self.batch:
            n = max(self.batch, n - n % self.batch)
        stop = start + n
        labels = None if self.labels is None else self.labels[start:stop]
        arrays = {k: v[start:stop] for k, v in self.arrays.items()}
        return Dataset(arrays, labels, self.batch, self.scalars)

    def sample(self, index: int = 0) -> dict[str, np.ndarray]:
        """One batch-sized sample (batch 1 unless the model fixes the batch size)."""
        size = self.batch or 1
        start = index * size
        return {**{k: v[start : start + size] for k, v in self.arrays.items()}, **self.scalars}

    def feeds(self) -> dict[str, np.ndarray]:
        """Every input as one feed dict (samples on axis 0, scalars as given)."""
        return {**self.arrays, **self.scalars}

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v.dtype.name} {list(v.shape)}" for k, v in self.arrays.items())
        return f"{len(self)} samples ({parts})"


def model_specs(model: str | os.PathLike[str]) -> tuple[TensorSpec, ...]:
    """The input signature of an ONNX model file (read with ONNX Runtime, nothing run)."""
    from edgeinfer.runtime.onnx import OnnxBackend

    backend = OnnxBackend(model, providers=["cpu"], graph_optimization="disabled")
    try:
        return backend.inputs
    finally:
        backend.close()


def _read_file(path: Path, what: str) -> tuple[dict[str, np.ndarray] | np.ndarray, Any]:
    if not path.is_file():
        raise InputError(f"{what}: file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            labels = arrays.pop(LABELS_KEY, None)
            return arrays, labels
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: cannot read {path} ({exc})") from None
    raise InputError(f"{what}: {path} is a {suffix or 'suffix-less'} file; expected .npz or .npy")


def load_labels(source: Any, what: str = "labels") -> np.ndarray:
    """Labels from an array, a list, an ``.npy`` file or an ``.npz`` with one array (or
    an array named ``labels``)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        data, inner = _read_file(path, what)
        if isinstance(data, np.ndarray):
            return data
        if inner is not None:
            return np.asarray(inner)
        if len(data) != 1:
            raise InputError(
                f"{what}: {path} holds {len(data)} arrays ({', '.join(data)}); expected one, "
                f"or one named {LABELS_KEY!r}"
            )
        return next(iter(data.values()))
    try:
        return np.asarray(source)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: not readable as an array ({exc})") from None


def _from_batches(items: Iterable[Any], what: str) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    count = 0
    for i, item in enumerate(items):
        if item is None:  # a CalibrationDataReader's end marker
            break
        if not isinstance(item, Mapping):
            raise InputError(
                f"{what}: batch {i} is a {type(item).__name__}; expected a dict input name -> array"
            )
        if parts and set(item) != set(parts):
            raise InputError(
                f"{what}: batch {i} has inputs {sorted(item)}, batch 0 had {sorted(parts)}"
            )
        for k, v in item.items():
            parts.setdefault(str(k), []).append(np.asarray(v))
        count += 1
    if count == 0:
        raise InputError(f"{what}: the iterator yielded no batches")
    try:
        return {k: np.concatenate(v) for k, v in parts.items()}
    except ValueError as exc:
        raise InputError(f"{what}: batches do not stack along axis 0 ({exc})") from None


def _as_arrays(source: Any, specs: Sequence[TensorSpec], what: str) -> tuple[Any, Any]:
    if isinstance(source, Dataset):
        return dict(source.arrays), source.labels
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source), what)
    if isinstance(source, np.ndarray):
        return source, None
    if isinstance(source, Mapping):
        arrays = dict(source)
        labels = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in {s.name for s in specs} else None
        return arrays, labels
    if isinstance(source, Iterable) or hasattr(source, "get_next"):
        if hasattr(source, "get_next") and not isinstance(source, Iterable):
            source = iter(source.get_next, None)
        return _from_batches(source, what), None
    raise InputError(
        f"{what}: a {type(source).__name__} is not a data source; pass an .npz/.npy path, "
        "a dict input name -> array, an array, or an iterable of such dicts"
    )


def load_dataset(
    source: DataSource,
    specs: Sequence[TensorSpec],
    *,
    labels: Any = None,
    what: str = "eval data",
) -> Dataset:
    """Read and validate ``source`` against a model's input ``specs`` (see module docs).

    ``labels`` (optional) overrides labels found in the source; their count must match.
    """
    specs = tuple(specs)
    if not specs:
        raise InputError(f"{what}: the model has no inputs to feed")
    raw, found_labels = _as_arrays(source, specs, what)
    if isinstance(raw, np.ndarray) or not isinstance(raw, Mapping):
        if len(specs) != 1:
            names = ", ".join(repr(s.name) for s in specs)
            raise InputError(
                f"{what}: one bare array given, but the model has {len(specs)} inputs "
                f"({names}); pass an .npz or dict with one array per input"
            )
        raw = {specs[0].name: np.asarray(raw)}
    if not raw:
        raise InputError(f"{what}: no arrays given; the model expects {_expected(specs)}")
    arrays = {k: np.asarray(v) for k, v in raw.items()}
    # A rank-0 model input (a sample rate, a threshold) has no sample axis: the value in
    # the file is given with every sample.
    rank0 = {s.name for s in specs if s.shape is not None and len(s.shape) == 0}
    scalars = {k: v for k, v in arrays.items() if k in rank0 and v.ndim == 0}
    arrays = {k: v for k, v in arrays.items() if k not in scalars}
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise InputError(f"{what}: input {name!r} is a scalar; expected samples on axis 0")
    if not arrays:
        raise InputError(
            f"{what}: only scalar inputs given ({', '.join(map(repr, scalars))}); "
            f"the model expects {_expected(specs)}"
        )
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    later = _batch_later(specs)
    if later is not None:
        raise InputError(
            f"{what}: input {later.name!r} ({later.describe()}) takes its batch on a later "
            "axis than 0 (a recurrent state); optimize feeds samples on axis 0 of every "
            "input, so this model is not supported"
        )
    if len(set(lengths.values())) > 1:
        raise InputError(
            f"{what}: inputs hold different numbers of samples "
            f"({', '.join(f'{k}: {n}' for k, n in lengths.items())}); they must agree"
        )
    n = next(iter(lengths.values()))
    if n == 0:
        raise InputError(f"{what}: the data set is empty (0 samples)")
    batch = _fixed_batch(specs)
    if batch and n % batch:
        raise InputError(
            f"{what}: {n} samples, but the model takes batches of exactly {batch}; "
            f"give a multiple of {batch}"
        )
    validator = InputValidator(specs)
    step = batch or n
    try:
        chunks = [
            validator({**{k: v[start : start + step] for k, v in arrays.items()}, **scalars})
            for start in range(0, n, step)
        ]
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    scalars = {k: chunks[0].pop(k) for k in scalars}
    for chunk in chunks[1:]:
        for k in scalars:
            chunk.pop(k)
    checked = (
        chunks[0]
        if len(chunks) == 1
        else {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    )
    label_array = None
    if labels is not None:
        label_array = load_labels(labels)
    elif found_labels is not None:
        label_array = np.asarray(found_labels)
    if label_array is not None and (label_array.ndim == 0 or label_array.shape[0] != n):
        got = "a scalar" if label_array.ndim == 0 else f"{label_array.shape[0]} labels"
        raise InputError(f"labels: {got} for {n} {what} samples; give one label per sample")
    return Dataset(checked, label_array, batch, scalars)


def _batch_later(specs: Sequence[TensorSpec]) -> TensorSpec | None:
    """An input fixed on axis 0 (other than 1) and free on a later axis, beside inputs
    free on axis 0: its batch is on that later axis, and no slicing on axis 0 fits it."""
    if not any(s.shape and not isinstance(s.shape[0], int) for s in specs):
        return None
    for s in specs:
        shape = s.shape or ()
        fixed0 = bool(shape) and isinstance(shape[0], int) and shape[0] != 1
        if fixed0 and any(not isinstance(d, int) for d in shape[1:]):
            return s
    return None


def _fixed_batch(specs: Sequence[TensorSpec]) -> int | None:
    sizes = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    return max(sizes) if sizes else None


def _expected(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name!r} ({s.describe()})" for s in specs)


def calibration_reader(data: Dataset, batch_size: int = 8) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``data`` (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._iter: Iterator[dict[str, np.ndarray]] = data.batches(batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = data.batches(batch_size)

    return _Reader()
