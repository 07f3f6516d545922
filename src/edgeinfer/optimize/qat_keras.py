"""Quantization-aware training of tf-keras models: the ``qat-int8`` LiteRT candidate.

``optimize_tflite(..., qat=KerasQAT(train="train.npz", epochs=3))`` (CLI: ``edgeinfer
optimize MODEL.h5 --qat --train TRAIN.npz --epochs N``) adds one candidate to the LiteRT
search: a copy of the model wrapped in fake quantization by
``tfmot.quantization.keras.quantize_model``, fine-tuned for a few epochs, then converted by
``TFLiteConverter`` to full INT8 with float inputs and outputs (the same conversion as the
post-training ``int8`` candidate, calibrated on the same data). It is evaluated, timed and
gated like every other candidate, so it is chosen only when it wins; the report sets it
beside post-training ``int8``.

tfmot still needs Keras 2 (the ``tf_keras`` package): the source must be a tf-keras model,
a legacy ``.h5`` or a tf-keras SavedModel. A Keras 3 model (``.keras``, or an ``.h5`` Keras 3
saved) is refused in one line before any work, as are a ``.tflite`` (nothing to train) and
training data that does not fit the model.

The training data is read like eval data: one array per model input, named as the inputs,
and ``labels``. With labels the loss is the one the model was compiled with (kept in the
``.h5``), else sparse categorical cross-entropy for integer class labels and mean squared
error for float targets; without labels the quantized copy learns the float model's own
outputs (mean squared error), so unlabelled data is enough.

QAT runs whenever it is asked for (it costs a training run; the search then lets it
compete); without it, a search whose post-training full-INT8 candidates all miss the budget
says in its notes that ``--qat`` may recover them.
"""

from __future__ import annotations

import json
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import InputError, MissingDependencyError
from edgeinfer.optimize.data import Dataset, DataSource, load_dataset
from edgeinfer.tensors import TensorSpec

__all__ = [
    "QAT_CANDIDATE",
    "EpochReport",
    "KerasQAT",
    "KerasQATStep",
    "PreparedQAT",
    "check_source",
    "keras_generation",
    "prepare_qat",
]

QAT_CANDIDATE = "qat-int8"  # full INT8 (float I/O) converted from the fine-tuned model


@dataclass(frozen=True)
class EpochReport:
    """One finished training epoch, for progress lines."""

    epoch: int  # 1-based
    epochs: int
    logs: dict[str, float]  # loss and metrics of the epoch, as Keras reports them
    seconds: float


@dataclass(frozen=True)
class KerasQAT:
    """What quantization-aware training to run (the caller's options)."""

    train: DataSource  # .npz/.npy path or mapping: one array per input, optional "labels"
    epochs: int = 3
    learning_rate: float = 1e-4  # Adam; small: the model is already trained
    batch_size: int = 32
    seed: int = 0
    on_epoch: Callable[[EpochReport], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class KerasQATStep:
    """The recipe step of the QAT candidate (recorded in report and manifest)."""

    framework: str  # "tfmot 0.8.1 (tf-keras 2.21.0)"
    epochs: int
    learning_rate: float
    batch_size: int
    train_samples: int
    loss: str


def keras_generation(path: str | os.PathLike[str]) -> int | None:
    """2 for a tf-keras (Keras 2) file or SavedModel, 3 for a Keras 3 one, None for a
    SavedModel without Keras metadata (written by plain TensorFlow)."""
    p = Path(path)
    version = ""
    if p.is_dir():
        return 2 if (p / "keras_metadata.pb").is_file() else None
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(p, "r") as f:
                raw = f.attrs.get("keras_version", "")
        except OSError:
            return 2  # not HDF5 at all: loading it says so, in one line
        # no version: written by Keras 2 before it recorded one
        version = (raw.decode() if isinstance(raw, bytes) else str(raw)) or "2"
    elif suffix == ".keras":
        try:
            with zipfile.ZipFile(p) as z:
                version = str(json.loads(z.read("metadata.json")).get("keras_version", "3"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return 3
    if not version:
        return None
    return 3 if version.split(".")[0] == "3" else 2


def _import_tfmot() -> tuple[Any, Any]:
    from edgeinfer.convert._tf import import_tf

    purpose = "Quantization-aware training (--qat)"
    tf = import_tf(purpose)
    try:
        import tf_keras
    except ImportError as exc:
        raise MissingDependencyError("tf-keras", "tensorflow", purpose) from exc
    # tfmot's import sets TF_USE_LEGACY_KERAS=1 for the whole process, which would turn
    # every later first use of tf.keras (the caller's, mtcnn's, our converters') into Keras 2.
    # Settle tf.keras as it stands first (Keras 3 unless the caller chose otherwise), then put
    # the variable back: tfmot itself still gets tf_keras.
    prior = os.environ.get("TF_USE_LEGACY_KERAS")
    _ = tf.keras.Model
    try:
        with warnings.catch_warnings():  # tfmot's import uses distutils' LooseVersion
            warnings.simplefilter("ignore", DeprecationWarning)
            import tensorflow_model_optimization as tfmot
    except ImportError as exc:
        raise MissingDependencyError(
            "tensorflow-model-optimization", "tensorflow", purpose
        ) from exc
    finally:
        if prior is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = prior
    return tf_keras, tfmot


def check_source(src: Path) -> None:
    """Refuse, in one line, a source tfmot cannot fine-tune (before any other work)."""
    if src.suffix.lower() == ".tflite":
        raise InputError(
            f"{src}: --qat fine-tunes the Keras model; a .tflite has nothing to train "
            "(give the tf-keras .h5 it was converted from)"
        )
    generation = keras_generation(src)
    if generation == 3:
        raise InputError(
            f"{src}: a Keras 3 model; quantization-aware training uses tfmot, which needs a "
            "tf-keras (Keras 2) model: build and train it with tf_keras and save it as .h5"
        )
    if generation is None:
        raise InputError(
            f"{src}: no tf-keras model inside (a SavedModel without Keras metadata); "
            "quantization-aware training uses tfmot, which needs a tf-keras (Keras 2) model "
            "(.h5 or a tf-keras SavedModel)"
        )


@dataclass
class PreparedQAT:
    """The checked training data and options, ready to train once the search gets there."""

    options: KerasQAT
    source: Path
    data: Dataset
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def samples(self) -> int:
        return len(self.data)

    def _model(self, tf_keras: Any) -> Any:
        from edgeinfer.convert._tf import quiet

        with quiet():
            try:
                return tf_keras.models.load_model(os.fspath(self.source), compile=True)
            except Exception:  # a custom loss or metric: train without the compiled one
                return tf_keras.models.load_model(os.fspath(self.source), compile=False)

    def _order(self, model: Any) -> list[str]:
        """The data's input names in the tf-keras model's input order."""
        names = list(getattr(model, "input_names", None) or [])
        return names if sorted(names) == sorted(self.input_names) else list(self.input_names)

    def _loss(self, model: Any, tf_keras: Any) -> tuple[Any, str, list[str]]:
        """The loss, its name for the recipe, and the metrics to report per epoch."""
        labels = self.data.labels
        losses = tf_keras.losses
        if labels is None:
            return losses.MeanSquaredError(), "mse to the float model's outputs", []
        compiled = getattr(model, "loss", None)
        if compiled is not None and not isinstance(compiled, (dict, list)):
            name = getattr(compiled, "__name__", None) or getattr(compiled, "name", str(compiled))
            metrics = ["accuracy"] if "categorical" in str(name) else []
            return compiled, str(name), metrics
        out_shape = tuple(model.outputs[0].shape)
        integer = np.issubdtype(labels.dtype, np.integer)
        if integer and labels.ndim == 1 and len(out_shape) == 2 and (out_shape[1] or 0) > 1:
            act = getattr(model.layers[-1], "activation", None)
            logits = getattr(act, "__name__", "") != "softmax"
            loss = losses.SparseCategoricalCrossentropy(from_logits=logits)
            return loss, "sparse_categorical_crossentropy", ["accuracy"]
        if np.issubdtype(labels.dtype, np.floating) or integer:
            return losses.MeanSquaredError(), "mse", []
        raise InputError(
            f"training data: labels of dtype {labels.dtype} for output shape "
            f"{list(out_shape)}; compile the model with its loss before saving it"
        )

    def train_and_convert(
        self,
        out_path: Path,
        work: Path,
        calibration: Any,
        calibration_samples: int,
    ) -> tuple[KerasQATStep, int, float]:
        """Fine-tune a fake-quantized copy and convert it to full INT8 (float I/O) at
        ``out_path``. Returns the recipe step, the calibration rows used and the seconds
        spent training."""
        from edgeinfer.convert._tf import import_tf, quiet
        from edgeinfer.convert.keras import keras_to_tflite

        tf = import_tf("Quantization-aware training (--qat)")
        tf_keras, tfmot = _import_tfmot()
        opts = self.options
        model = self._model(tf_keras)
        order = self._order(model)
        x = [np.asarray(self.data.arrays[n]) for n in order]
        feed: Any = x[0] if len(x) == 1 else x
        loss, loss_name, metrics = self._loss(model, tf_keras)
        with quiet():
            targets = self.data.labels
            if targets is None:  # learn the float model's own outputs
                targets = model.predict(feed, batch_size=256, verbose=0)
            tf_keras.utils.set_random_seed(opts.seed)
            qmodel = tfmot.quantization.keras.quantize_model(model)
            qmodel.compile(
                optimizer=tf_keras.optimizers.Adam(opts.learning_rate),
                loss=loss,
                metrics=metrics,
            )
        started = time.perf_counter()
        last = [started]

        def on_epoch_end(epoch: int, logs: dict[str, Any] | None) -> None:
            now = time.perf_counter()
            if opts.on_epoch is not None:
                values = {k: float(v) for k, v in (logs or {}).items()}
                opts.on_epoch(EpochReport(epoch + 1, opts.epochs, values, now - last[0]))
            last[0] = now

        with quiet():
            qmodel.fit(
                feed,
                targets,
                epochs=opts.epochs,
                batch_size=opts.batch_size,
                shuffle=True,
                verbose=0,
                callbacks=[tf_keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)],
            )
        seconds = time.perf_counter() - started
        saved = work / "qat_saved_model"
        self._export(tf, qmodel, order, saved)
        rows = calibration
        if rows is None:  # calibrate on the training inputs
            rows = {n: a[:calibration_samples] for n, a in self.data.arrays.items()}
        n_cal = min(min(len(np.asarray(a)) for a in rows.values()), calibration_samples)
        keras_to_tflite(
            saved,
            out_path,
            quantize="int8",
            calibration=rows,
            atol=float("inf"),  # the search's gate judges accuracy, on real data
            min_cosine=-1.0,
        )
        import tensorflow_model_optimization as tfmot_pkg

        step = KerasQATStep(
            framework=f"tfmot {tfmot_pkg.__version__} (tf-keras {tf_keras.__version__})",
            epochs=opts.epochs,
            learning_rate=opts.learning_rate,
            batch_size=opts.batch_size,
            train_samples=self.samples,
            loss=loss_name,
        )
        return step, n_cal, seconds

    def _export(self, tf: Any, qmodel: Any, order: list[str], saved: Path) -> None:
        """A SavedModel whose serving signature has the source's input and output names,
        so the converted model is fed and read like every other candidate."""
        from edgeinfer.convert._tf import quiet

        specs = [
            tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=name)
            for name, t in zip(order, qmodel.inputs, strict=True)
        ]
        names = list(self.output_names)

        def serve(*args: Any) -> dict[str, Any]:
            out = qmodel(list(args) if len(args) > 1 else args[0], training=False)
            outs = out if isinstance(out, (list, tuple)) else [out]
            return dict(zip(names, outs, strict=True))

        fn = tf.function(serve, input_signature=specs)
        # A bare module holding the function and the weights: saving the Keras model itself
        # traces every layer for tf-keras's own format (5 s against 0.9 s on the digits CNN).
        module = tf.Module()
        module.weights = list(qmodel.variables)
        module.serve = fn
        with quiet():
            tf.saved_model.save(
                module, os.fspath(saved), signatures={"serving_default": fn.get_concrete_function()}
            )


def prepare_qat(
    options: KerasQAT,
    src: Path,
    specs: Sequence[TensorSpec],
    outputs: Sequence[str],
) -> PreparedQAT:
    """Check the source and the training data before the search starts (one-line errors)."""
    check_source(src)
    if options.epochs < 1:
        raise InputError(f"--epochs {options.epochs}: expected a positive number of epochs")
    if options.batch_size < 1:
        raise InputError(f"QAT batch size {options.batch_size}: expected a positive number")
    _import_tfmot()  # a missing package is said now, not after the search
    data = load_dataset(options.train, specs, what="training data (--train)")
    return PreparedQAT(options, src, data, tuple(s.name for s in specs), tuple(outputs))
