"""Deltas between two versions of a ``.tflite`` bundle: tensor-aware against bsdiff.

A ``.tflite`` is a flatbuffer: the tensor-aware delta walks it
(src/edgeinfer/deliver/_tflite_wire.py) and ships only the buffers that changed; bsdiff
sees bytes. Updates measured, each on packed bundles as ``edgeinfer publish`` ships them:

- ``keras_finetune_last_layer``: a Keras CNN trained on scikit-learn's digits (8x8), then
  its last Dense layer trained 3 more epochs, each converted by TFLiteConverter (float32)
- ``keras_finetune_int8``: the same two models, each converted to full INT8 with the same
  calibration images (re-quantized: the fine-tuned layer's weights and scales change)
- ``keras_requantize``: v1 float32 -> v1 dynamic-range INT8 (every weight tensor changes)
- ``keras_retrain``: the CNN trained again from another seed (float32)
- ``hey_jarvis_first_dense``: openWakeWord's hey_jarvis classifier (corpus) with its first
  Dense layer's weights (1536 x 128, 61% of the file) moved by 1% of their standard
  deviation in place (a fine-tune step of most of the model)

For each: bytes of the full bundle, the tensor-aware delta, the same method blind to the
flatbuffer (the whole model as literal bytes, as before it could walk TFLite), bsdiff, and
which one ``make_delta`` keeps.
Run: .venv/bin/python benchmarks/bench_delta_tflite.py   (writes results/delta_tflite.json)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write
from bench_delta import delta_figures
from edgeinfer.bundle import Bundle
from edgeinfer.deliver import DeltaConfig, make_delta

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[..., None] / 16.0).astype(np.float32), d.target.astype(np.int64)


def _cnn(seed: int, x: np.ndarray, y: np.ndarray) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    return model


def _tflite(model: Any, out: Path, mode: str, calib: np.ndarray) -> Path:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("int8", "dynamic"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        conv.representative_dataset = lambda: ([c[None]] for c in calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out.write_bytes(conv.convert())
    return out


def _nudge_largest(src: Path, dst: Path) -> Path:
    """A fine-tune step in place: the largest float32 buffer moves by 1% of its standard
    deviation; every other byte of the flatbuffer is kept."""
    from edgeinfer.deliver._tflite_wire import tflite_spans

    data = bytearray(src.read_bytes())
    spans = [s for s in tflite_spans(memoryview(data), 0, len(data)) if s[3] == 1]
    name, off, n, _ = max(spans, key=lambda s: s[2])
    w = np.frombuffer(bytes(data[off : off + n]), np.float32)
    w = w + np.random.default_rng(1).standard_normal(w.shape).astype(np.float32) * 0.01 * w.std()
    data[off : off + n] = w.astype(np.float32).tobytes()
    dst.write_bytes(bytes(data))
    print(f"  nudged {name!r} ({n} bytes)", flush=True)
    return dst


def _bundle(model: Path, out: Path, version: int, golden: np.ndarray) -> Path:
    b = Bundle.create(
        model, out / "dir", name="tfl", version=version, golden_inputs=golden, overwrite=True
    )
    return b.pack(out / f"tfl-{version}.tar")


def _blind(base: Path, target: Path, out: Path) -> int:
    """The tensor method without the flatbuffer walk: what it shipped before."""
    import edgeinfer.deliver._onnx_wire as wire

    saved = wire.is_tflite
    wire.is_tflite = lambda *a: False  # type: ignore[assignment]
    try:
        return make_delta(base, target, out, DeltaConfig(methods=("tensor",))).size
    finally:
        wire.is_tflite = saved


def measure(name: str, v1: Path, v2: Path, golden: np.ndarray, work: Path) -> dict[str, Any]:
    d = work / name
    d.mkdir()
    b1 = _bundle(v1, d / "1", 1, golden)
    b2 = _bundle(v2, d / "2", 2, golden)
    fig = delta_figures(b1, b2, d, bsdiff_limit=120)
    fig["tensor_blind_bytes"] = _blind(b1, b2, d / "blind.delta")
    start = time.perf_counter()
    kept = make_delta(b1, b2, d / "kept.delta")
    fig["kept"] = {"method": kept.method, "bytes": kept.size, "candidates": kept.candidates}
    fig["kept"]["compute_s"] = time.perf_counter() - start
    print(name, json.dumps({k: fig[k] for k in ("full_bytes", "tensor_blind_bytes", "kept")}))
    print("  tensor", fig["tensor"]["bytes"], "bsdiff", fig["bsdiff"]["bytes"], flush=True)
    return fig


def main() -> None:
    results: dict[str, Any] = {}
    x, y = _digits()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import keras

        v1 = _cnn(0, x, y)
        tuned = keras.models.clone_model(v1)
        tuned.set_weights(v1.get_weights())
        for layer in tuned.layers[:-1]:
            layer.trainable = False
        tuned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        tuned.fit(x, y, epochs=3, batch_size=64, verbose=0)
        retrained = _cnn(1, x, y)
        calib = x[:200]
        f1 = _tflite(v1, work / "v1.tflite", "float", calib)
        f2 = _tflite(tuned, work / "ft.tflite", "float", calib)
        q1 = _tflite(v1, work / "v1-int8.tflite", "int8", calib)
        q2 = _tflite(tuned, work / "ft-int8.tflite", "int8", calib)
        dyn = _tflite(v1, work / "v1-dyn.tflite", "dynamic", calib)
        rt = _tflite(retrained, work / "rt.tflite", "float", calib)
        g = x[:4]
        gq = np.clip(np.round(x[:4] / 0.00392 - 128), -128, 127).astype(np.int8)
        results["keras_finetune_last_layer"] = measure("keras_finetune_last_layer", f1, f2, g, work)
        results["keras_finetune_int8"] = measure("keras_finetune_int8", q1, q2, gq, work)
        results["keras_requantize"] = measure("keras_requantize", f1, dyn, g, work)
        results["keras_retrain"] = measure("keras_retrain", f1, rt, g, work)
        import wyoming_openwakeword

        jarvis = Path(wyoming_openwakeword.__file__).parent / "models" / "hey_jarvis_v0.1.tflite"
        j2 = _nudge_largest(jarvis, work / "jarvis-ft.tflite")
        gj = np.random.default_rng(0).standard_normal((1, 16, 96)).astype(np.float32)
        results["hey_jarvis_first_dense"] = measure("hey_jarvis_first_dense", jarvis, j2, gj, work)
    path = write("delta_tflite", {"results": results})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
