"""Small real Keras models trained in the tests: a CNN on scikit-learn's digits (NHWC) and an
MLP on tabular data (the wine data set). Each trains in a few seconds on two cores."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class Trained:
    model: object  # keras.Model
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=2)  # trained once per test process; never modify the model
def digits_cnn(epochs: int = 12, width: int = 16, dense: int = 32) -> Trained:
    """A small CNN on 8x8 digits, NHWC [N, 8, 8, 1] in, softmax over 10 classes out
    (``width`` filters per convolution, ``dense`` units in the hidden layer)."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(width, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(dense, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=epochs, batch_size=32, verbose=0)
    return Trained(model, x[:1400], y[:1400], x[1400:], y[1400:])


@functools.lru_cache(maxsize=2)
def wine_mlp(epochs: int = 40) -> Trained:
    """An MLP on the 13 standardized features of the wine data set, 3 classes out."""
    import keras
    from sklearn.datasets import load_wine

    wine = load_wine()
    x = wine.data.astype(np.float32)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = wine.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((13,), name="features"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ],
        name="wine_mlp",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:130], y[:130], epochs=epochs, batch_size=32, verbose=0)
    return Trained(model, x[:130], y[:130], x[130:], y[130:])


@functools.lru_cache(maxsize=2)
def digits_cnn_tf_keras(epochs: int = 12, width: int = 16, dense: int = 32) -> Trained:
    """The digits CNN of :func:`digits_cnn` built and trained with tf-keras (Keras 2), as
    tfmot's quantization-aware training needs; compiled, so a saved ``.h5`` keeps its loss."""
    import tf_keras as keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(width, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(dense, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=epochs, batch_size=32, verbose=0)
    return Trained(model, x[:1400], y[:1400], x[1400:], y[1400:])
