"""TensorFlow sources for the conversions: load a Keras model or SavedModel, run it, check.

Shared by :mod:`.keras` (-> ONNX through tf2onnx, -> TFLite through ``TFLiteConverter``)
and :mod:`.tflite` (``.tflite`` -> ONNX). TensorFlow, Keras and tf2onnx are imported only
here and only when a conversion runs (``import edgeinfer`` never loads them); a missing
package is a ``MissingDependencyError`` naming the ``tensorflow`` extra.

Every route goes through a SavedModel with an explicit input signature: Keras 3 models are
exported with ``model.export`` (its ``serve`` endpoint), a SavedModel directory is used as
it is. The source framework's own outputs on sample inputs are the reference for the
parity check (:func:`check_parity`): max absolute error and cosine per output; beyond the
tolerance a :class:`ConversionError` names the worst output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.convert.errors import ConversionError
from edgeinfer.errors import InputError, MissingDependencyError

__all__ = [
    "KERAS_SUFFIXES",
    "Parity",
    "TFSource",
    "check_parity",
    "import_tf",
    "import_tf2onnx",
    "is_saved_model",
    "load_source",
    "quiet",
    "sample_feeds",
]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """True for a TensorFlow SavedModel directory."""
    p = Path(path)
    return p.is_dir() and (p / "saved_model.pb").is_file()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """TensorFlow's and tf2onnx's deprecation chatter and log lines kept out of the way."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow", "absl")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


# What TensorFlow 2.21's C++ writes to stderr as it loads, whatever TF_CPP_MIN_LOG_LEVEL says
# (absl's logging is not yet set up): a note about absl and one about oneDNN, twice each.
_IMPORT_NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called",
    b"oneDNN custom operations are on",
)


@contextlib.contextmanager
def drop_import_noise() -> Iterator[None]:
    """File descriptor 2 held aside while TensorFlow loads; what was written meanwhile goes
    back to it, less TensorFlow's two start-up notes."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedding host): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [
                line
                for line in held.read().splitlines(keepends=True)
                if not any(noise in line for noise in _IMPORT_NOISE)
            ]
            if kept:
                os.write(2, b"".join(kept))


def import_tf(purpose: str = "Converting a TensorFlow model") -> Any:
    """``tensorflow`` (its C++ logs limited to errors, its start-up notes dropped), or the
    install hint."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            with quiet(), drop_import_noise():
                import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow-cpu", "tensorflow", purpose) from exc
    return tf


def import_tf2onnx(purpose: str = "Converting a TensorFlow model to ONNX") -> Any:
    import_tf(purpose)
    try:
        with quiet():
            import tf2onnx
            import tf2onnx.tfonnx  # registers the op handlers (listed for unsupported ops)
    except ImportError as exc:
        raise MissingDependencyError("tf2onnx", "tensorflow", purpose) from exc
    return tf2onnx


@dataclass(frozen=True)
class InputSpec:
    """One input of the serving signature: name, shape (None: any size), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name


@dataclass
class TFSource:
    """A Keras model or SavedModel ready to convert: its SavedModel directory, the
    signature's inputs and outputs, and the function that computes the reference."""

    path: Path
    kind: str  # keras | saved_model
    saved_model: Path  # the SavedModel every route converts from
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    layout: str  # NHWC, NCHW, or "" when no input is an image
    serve_fn: Any = field(repr=False, default=None)
    _keep: Any = field(repr=False, default=None)  # the signature needs its object graph alive

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The source framework's outputs (the parity reference), by output name."""
        tf = import_tf()
        with quiet():
            args = {k: tf.constant(v) for k, v in feeds.items()}
            out = self.serve_fn(**args)
        return {k: np.asarray(out[k]) for k in self.outputs}


def _layout(model: Any, inputs: Sequence[InputSpec]) -> str:
    if not any(len(s.shape) == 4 for s in inputs):
        return ""
    formats = {
        getattr(layer, "data_format", None) for layer in getattr(model, "layers", None) or ()
    }
    return "NCHW" if "channels_first" in formats else "NHWC"


def _call_once(model: Any, path: Path, samples: Sequence[np.ndarray] | None) -> Any:
    """Keras exports a subclassed model only once it has run, and from the shapes its
    ``build()`` recorded: mtcnn's networks, built without shapes and given their weights,
    have neither. Run such a model on the samples first.

    Returns the input signature to export with when Keras recorded none: the samples'
    shapes with the batch axis left open. None for functional and Sequential models, whose
    inputs Keras knows."""
    import keras

    if isinstance(model, keras.Sequential) or getattr(model, "_inputs_struct", None) is not None:
        return None
    uncalled = not getattr(model, "_called", True)
    unshaped = not getattr(model, "_build_shapes_dict", None)
    if not (uncalled or unshaped):
        return None
    if not samples:
        raise InputError(
            f"{path}: the Keras model has never been called, so it has no input signature; "
            "pass sample inputs (inputs=, --inputs FILE)"
        )
    args = [np.asarray(a) for a in samples]
    if uncalled:
        try:
            with quiet():
                model(args[0] if len(args) == 1 else args)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConversionError(f"{path}: the model fails on the sample inputs: {first}") from exc
    if not unshaped:
        return None
    tf = import_tf()
    specs = [tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in args]
    return specs if len(specs) == 1 else [specs]


def load_source(src: Any, workdir: Path, samples: Sequence[np.ndarray] | None = None) -> TFSource:
    """A Keras model (object, ``.keras``/``.h5`` path) or a SavedModel directory.

    ``samples``: sample arrays in input order, used to run a model object that has never
    been called (Keras cannot export it otherwise)."""
    tf = import_tf()
    model = None
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise InputError(f"{path}: file not found")
        if is_saved_model(path):
            kind, saved = "saved_model", path
        elif path.suffix.lower() in KERAS_SUFFIXES:
            import keras

            try:
                with quiet():
                    model = keras.models.load_model(os.fspath(path), compile=False)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if first.startswith("File not found"):  # Keras's word for "not a zip"
                    first = "not a Keras model file (a .keras zip or an HDF5 .h5)"
                raise ConversionError(f"{path}: Keras cannot load the model: {first}") from exc
            kind, saved = "keras", workdir / "saved_model"
        else:
            raise InputError(
                f"{path}: expected a Keras model (.keras, .h5) or a SavedModel directory "
                "(holding saved_model.pb)"
            )
    else:
        if not callable(getattr(src, "export", None)):
            raise InputError(f"expected a Keras model or a path, got {type(src).__name__}")
        model, path, kind = src, Path(getattr(src, "name", "model")), "keras"
        saved = workdir / "saved_model"
    if model is not None:
        signature = _call_once(model, path, samples)
        try:
            with quiet():
                model.export(
                    os.fspath(saved),
                    format="tf_saved_model",
                    verbose=False,
                    input_signature=signature,
                )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConversionError(f"{path}: cannot export a SavedModel: {first}") from exc
    with quiet():
        loaded = tf.saved_model.load(os.fspath(saved))
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ConversionError(f"{path}: the SavedModel has no serving signature")
    serve = signatures.get("serving_default") or next(iter(signatures.values()))
    specs = serve.structured_input_signature[1]
    inputs = tuple(
        InputSpec(
            name,
            tuple(None if d is None else int(d) for d in spec.shape.as_list()),
            spec.dtype.as_numpy_dtype().dtype.name,
        )
        for name, spec in sorted(specs.items())
    )
    if model is not None and len(inputs) > 1:
        # Keras names its inputs; keep the model's order, not the alphabet's.
        order = [getattr(t, "name", "").split(":")[0] for t in model.inputs]
        inputs = tuple(sorted(inputs, key=lambda s: order.index(s.name) if s.name in order else 0))
    outputs = tuple(serve.structured_outputs)
    layout = _layout(model, inputs)
    return TFSource(path, kind, Path(saved), inputs, outputs, layout, serve, loaded)


def sample_feeds(
    inputs: Sequence[InputSpec], given: Sequence[np.ndarray] | None, batch: int = 2
) -> dict[str, np.ndarray]:
    """The given sample arrays (in input order) or random ones made from the signature."""
    if given is not None:
        if len(given) != len(inputs):
            names = ", ".join(s.name for s in inputs)
            raise InputError(f"{len(given)} sample arrays for {len(inputs)} inputs ({names})")
        feeds = {}
        for spec, arr in zip(inputs, given, strict=True):
            arr = np.asarray(arr)
            fits = arr.ndim == len(spec.shape) and all(
                d is None or d == n for d, n in zip(spec.shape, arr.shape, strict=False)
            )
            if not fits:
                raise InputError(
                    f"sample input {spec.name!r}: expected shape "
                    f"{['N' if d is None else d for d in spec.shape]}, got {list(arr.shape)}"
                )
            feeds[spec.name] = arr.astype(spec.dtype, copy=False)
        return feeds
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in inputs:
        shape = tuple(batch if d is None else d for d in spec.shape)
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            feeds[spec.name] = rng.random(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds


@dataclass(frozen=True)
class Parity:
    """How closely a converted model reproduces its source on the sample inputs."""

    max_abs_error: float  # largest |converted - source| over all outputs
    cosine: float  # smallest cosine similarity of an output (flattened) with the source's
    worst_output: str


def check_parity(
    want: Mapping[str, np.ndarray],
    got: Sequence[np.ndarray],
    *,
    where: str,
    atol: float,
    min_cosine: float,
) -> Parity:
    """Compare outputs in order; beyond ``atol`` (scaled by the output's range above 1) or
    under ``min_cosine`` a :class:`ConversionError` names the worst output."""
    worst_name, worst_err, worst_cos, worst_excess = "", 0.0, 1.0, -np.inf
    verdicts = []
    if len(got) != len(want):
        raise ConversionError(
            f"{where}: {len(got)} outputs, the source has {len(want)} ({', '.join(want)})"
        )
    for (name, ref), out in zip(want.items(), got, strict=True):
        a = np.asarray(ref, dtype=np.float64)
        b = np.asarray(out, dtype=np.float64)
        if a.size != b.size:
            raise ConversionError(
                f"{where}: output {name!r} has shape {list(b.shape)}, the source's {list(a.shape)}"
            )
        b = b.reshape(a.shape)
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cos = 1.0 if na == nb == 0.0 else float(np.dot(a.ravel(), b.ravel()) / (na * nb or 1.0))
        scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
        # atol 0 asks for exact outputs: any error is beyond it, none is within
        excess = max(err / max(atol * scale, 1e-300), (1.0 - cos) / max(1.0 - min_cosine, 1e-12))
        verdicts.append(excess <= 1.0)
        worst_err, worst_cos = max(worst_err, err), min(worst_cos, cos)
        if excess > worst_excess:
            worst_name, worst_excess = name, excess
    if not all(verdicts):
        ref = np.asarray(want[worst_name], dtype=np.float64)
        idx = list(want).index(worst_name)
        out = np.asarray(got[idx], dtype=np.float64).reshape(ref.shape)
        err = float(np.max(np.abs(ref - out)))
        na, nb = float(np.linalg.norm(ref)), float(np.linalg.norm(out))
        cos = float(np.dot(ref.ravel(), out.ravel()) / (na * nb or 1.0))
        raise ConversionError(
            f"{where}: output {worst_name!r} differs from the source: max abs error "
            f"{err:.3g}, cosine {cos:.6f} (tolerance: atol {atol:g}, cosine >= {min_cosine:g})"
        )
    return Parity(worst_err, worst_cos, worst_name)
