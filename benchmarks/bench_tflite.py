"""TensorFlow routes: the LiteRT search against TFLiteConverter's plain full INT8, ONNX Runtime
beside LiteRT, and conversion parity and time for every TF model converted.

1. ``digits_cnn``: a Keras CNN trained on scikit-learn's digits (8x8x1, NHWC), optimized for
   LiteRT with ``optimize_tflite`` (accuracy, ``--max-drop 0.5%``, ``--objective size``)
   against the anchor: TFLiteConverter's plain full-INT8 conversion (``Optimize.DEFAULT``,
   the same 200 calibration images, builtin INT8 ops, float I/O). Accuracy on the 397
   held-out digits, file size, and LiteRT latency (single-sample ``edgeinfer`` calls, one
   thread, CPU time per call, interleaved).
2. The same Keras model converted to ONNX and optimized for ONNX Runtime (a few INT8
   candidates, same calibration), its chosen bundle timed beside the LiteRT one; and
   ``--target both`` (``optimize_both``, every default candidate of both worlds) on it.
3. Conversion parity (max abs error, cosine against the source framework) and time: the
   digits CNN and a wine MLP, Keras -> ONNX and -> TFLite; the corpus's ``.tflite`` models
   (openWakeWord, pymicro-wakeword, fer's int8 classifier, MediaPipe's float16 face
   detector, selfie segmentation and hand landmarks) -> ONNX, or the operators tf2onnx
   lacks; PyTorch -> TFLite with litert-torch (a digits CNN, NCHW, and transformers'
   ResNet at a tiny size), where litert-torch is installed.
4. Post-training vs quantization-aware INT8 (``--qat``): the digits CNN built with tf-keras
   (tfmot needs Keras 2), at the width above and 8x narrower, searched for LiteRT with
   ``candidates=("int8",)`` and ``qat=KerasQAT(train, epochs=3)`` (Adam at 1e-4 on the 1,400
   training digits); accuracy, size and LiteRT latency of both INT8 models. Control: the
   float model fine-tuned for the same epochs at the same rate *without* fake quantization,
   then post-training int8 (same 128 calibration images), so that a QAT gain is not just
   more training.

Run: .venv/bin/python benchmarks/bench_tflite.py [--part all|qat|conversions]   (writes
results/tflite.json; ``--part qat`` re-runs section 4 only, ``--part conversions`` section 3
only, and each keeps the other sections' figures)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import edgeinfer
from _common import RESULTS, median, write
from edgeinfer.bundle import Bundle
from edgeinfer.convert import ConversionError, keras_to_onnx, keras_to_tflite, tflite_to_onnx
from edgeinfer.convert.tflite import run_tflite
from edgeinfer.optimize import SearchConfig, optimize, optimize_tflite
from keras_models import digits_cnn, digits_cnn_tf_keras, wine_mlp

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _save(model: Any, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # tf-keras calls .h5 legacy
        model.save(path)
    return path


def interleaved(fns: dict[str, Any], *, calls: int, repeats: int) -> dict[str, list[float]]:
    """CPU seconds per call of each function (one thread each), blocks interleaved A B, B A.

    At load average 10 on two shared cores a wall-clock block is as often preempted as not
    (the same bundle read 7 us and 22 us in one run); the process's CPU time is not."""
    for fn in fns.values():
        for _ in range(20):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.process_time()
            for _ in range(calls):
                fns[name]()
            out[name].append((time.process_time() - start) / calls)
    return out


def _golden_call(bundle_dir: Path) -> Any:
    """One single-sample ``edgeinfer`` call of a bundle, on its first golden input."""
    bundle = Bundle.open(bundle_dir)
    golden = bundle.golden()
    assert golden is not None
    model = edgeinfer.load(bundle_dir, providers=["cpu"], threads=1)
    feeds = {k: np.asarray(v)[:1] for k, v in golden.inputs.items()}
    model.predict(feeds)
    return lambda: model.predict(feeds)


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    probs = run_tflite(path, {"pixels": x}, signature=True)["output_0"]
    return float(np.mean(probs.argmax(1) == y))


def _litert_vs_anchor(root: Path, trained: Any) -> dict[str, Any]:
    keras_file = _save(trained.model, root / "digits.keras")
    calib = trained.x_train[:200]
    started = time.perf_counter()
    outcome = optimize_tflite(
        keras_file,
        {"pixels": trained.x_test, "labels": trained.y_test},
        root / "digits-litert",
        calibration={"pixels": calib},
        config=SearchConfig(metric="accuracy", max_drop="0.5%", objective="size", memory=False),
        report=False,
    )
    search_s = time.perf_counter() - started
    result = outcome.result
    chosen = result.chosen
    assert chosen.evaluation is not None and result.baseline.evaluation is not None
    anchor = keras_to_tflite(
        keras_file, root / "anchor.tflite", quantize="int8", calibration=[calib]
    )
    anchor_bundle = Bundle.create(
        anchor.path,
        root / "anchor",
        name="anchor",
        golden_inputs={"serving_default_pixels:0": trained.x_test[:4]},
        atol=1e-2,
        rtol=1e-2,
    )
    float_size = result.baseline.evaluation.size_bytes
    lat = interleaved(
        {
            "chosen": _golden_call(outcome.bundle.path),
            "anchor": _golden_call(anchor_bundle.path),
            "float32": _golden_call(_float_bundle(root, keras_file)),
        },
        calls=200,
        repeats=15,
    )
    chosen_acc = chosen.evaluation.metrics["accuracy"]
    anchor_acc = _accuracy(anchor.path, trained.x_test, trained.y_test)
    chosen_size = chosen.evaluation.size_bytes
    anchor_size = anchor.path.stat().st_size
    ms = {k: round(median(v) * 1000, 4) for k, v in lat.items()}
    return {
        "search_seconds": round(search_s, 1),
        "message": result.message,
        "candidates": [
            {
                "name": c.name,
                "status": c.status,
                "accuracy": c.evaluation.metrics["accuracy"] if c.evaluation else None,
                "size_bytes": c.evaluation.size_bytes if c.evaluation else None,
                "litert_ms": round(c.latency_ms, 4) if c.evaluation else None,
            }
            for c in [result.baseline, *result.candidates]
        ],
        "chosen": {"name": chosen.name, "accuracy": chosen_acc, "size_bytes": chosen_size},
        "anchor": {
            "name": "TFLiteConverter full INT8",
            "accuracy": anchor_acc,
            "size_bytes": anchor_size,
        },
        "float32": {
            "accuracy": result.baseline.evaluation.metrics["accuracy"],
            "size_bytes": float_size,
        },
        "cpu_ms_per_edgeinfer_call": ms,
        "targets": {
            "accuracy_ge_anchor": chosen_acc >= anchor_acc,
            "size_le_anchor": chosen_size <= anchor_size,
            "size_le_0.30x_float32": chosen_size <= 0.30 * float_size,
            "size_ratio_vs_float32": round(chosen_size / float_size, 4),
            "latency_le_anchor": ms["chosen"] <= ms["anchor"],
        },
    }


def _float_bundle(root: Path, keras_file: Path) -> Path:
    """The float32 TFLite model (the search's baseline, whose file went with its work dir)."""
    flt = keras_to_tflite(keras_file, root / "float32.tflite")
    x = np.zeros((4, 8, 8, 1), np.float32)
    golden = {"serving_default_pixels:0": x}
    Bundle.create(flt.path, root / "float32", name="float32", golden_inputs=golden)
    return root / "float32"


def _onnx_beside_litert(root: Path, trained: Any) -> dict[str, Any]:
    onnx_file = root / "digits.onnx"
    keras_to_onnx(root / "digits.keras", onnx_file)
    started = time.perf_counter()
    outcome = optimize(
        onnx_file,
        {"pixels": trained.x_test, "labels": trained.y_test},
        root / "digits-onnx",
        calibration={"pixels": trained.x_train[:200]},
        config=SearchConfig(
            metric="accuracy",
            max_drop="0.5%",
            objective="size",
            memory=False,
            candidates=("dynamic-int8", "static-int8-minmax", "static-int8-entropy"),
        ),
        report=False,
    )
    search_s = time.perf_counter() - started
    ev = outcome.result.chosen.evaluation
    assert ev is not None
    lat = interleaved(
        {
            "onnxruntime": _golden_call(outcome.bundle.path),
            "litert": _golden_call(root / "digits-litert"),
        },
        calls=200,
        repeats=15,
    )
    litert = Bundle.open(root / "digits-litert")
    return {
        "onnx_chosen": outcome.result.chosen.name,
        "onnx_search_seconds": round(search_s, 1),
        "onnx_accuracy": ev.metrics["accuracy"],
        "onnx_size_bytes": ev.size_bytes,
        "litert_chosen": (litert.manifest.provenance.get("recipe") or {}).get("candidate"),
        "litert_size_bytes": litert.model_path.stat().st_size,
        "cpu_ms_per_edgeinfer_call": {k: round(median(v) * 1000, 4) for k, v in lat.items()},
    }


def _both(root: Path, trained: Any) -> dict[str, Any]:
    """``--target both`` on the same model, data and budget: which world it keeps, and why."""
    from edgeinfer.optimize.targets import optimize_both

    started = time.perf_counter()
    outcome = optimize_both(
        root / "digits.keras",
        {"pixels": trained.x_test, "labels": trained.y_test},
        root / "digits-both",
        calibration={"pixels": trained.x_train[:200]},
        config=SearchConfig(metric="accuracy", max_drop="0.5%", objective="size", memory=False),
    )
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "format": outcome.bundle.manifest.format,
        "chosen": outcome.result.chosen.name,
        "note": outcome.result.notes[-1],
    }


def _parity(root: Path, cnn: Any, mlp: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    models = {
        "digits_cnn": (_save(cnn.model, root / "p_digits.keras"), cnn.x_test[:64]),
        "wine_mlp": (_save(mlp.model, root / "p_wine.h5"), mlp.x_test),
    }
    for name, (path, x) in models.items():
        for route, fn, suffix in (
            ("keras->onnx", keras_to_onnx, ".onnx"),
            ("keras->tflite", keras_to_tflite, ".tflite"),
        ):
            t0 = time.perf_counter()
            rep = fn(path, root / f"{name}{suffix}", inputs=[x])
            rows.append(
                {
                    "model": name,
                    "source": path.suffix,
                    "route": route,
                    "max_abs_error": rep.max_abs_error,
                    "cosine": rep.cosine,
                    "layout": rep.layout,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    face, selfie, hand = (
        "modules/face_detection/face_detection_short_range.tflite",
        "modules/selfie_segmentation/selfie_segmentation.tflite",
        "modules/hand_landmark/hand_landmark_lite.tflite",
    )
    for name, package, rel in (
        ("oww_melspectrogram", "wyoming_openwakeword", "models/melspectrogram.tflite"),
        ("oww_embedding", "wyoming_openwakeword", "models/embedding_model.tflite"),
        ("oww_hey_jarvis", "wyoming_openwakeword", "models/hey_jarvis_v0.1.tflite"),
        ("pmw_okay_nabu", "pymicro_wakeword", "models/okay_nabu.tflite"),
        ("fer_emotion_int8", "fer", "data/emotion_model_quantized.tflite"),
        ("mp_face_detection", "mediapipe", face),
        ("mp_selfie_segmentation", "mediapipe", selfie),
        ("mp_hand_landmarks", "mediapipe", hand),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            rows.append(
                {"model": name, "route": "tflite->onnx", "error": f"{package} not installed"}
            )
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        t0 = time.perf_counter()
        # the melspectrogram takes audio of any length: 1280 samples (80 ms at 16 kHz)
        audio = [np.random.default_rng(0).normal(scale=1000, size=(1, 1280)).astype(np.float32)]
        try:
            rep = tflite_to_onnx(
                path, root / f"{name}.onnx", inputs=audio if "melspec" in name else None
            )
        except ConversionError as exc:
            rows.append(
                {"model": name, "route": "tflite->onnx", "error": str(exc).split(": ", 1)[1]}
            )
            continue
        rows.append(
            {
                "model": name,
                "source": ".tflite",
                "route": "tflite->onnx",
                "max_abs_error": rep.max_abs_error,
                "cosine": rep.cosine,
                "layout": rep.layout,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    rows.extend(_mtcnn_parity(root))
    rows.extend(_torch_parity(root))
    return rows


def _mtcnn_parity(root: Path) -> list[dict[str, Any]]:
    """mtcnn's PNet/RNet/ONet: subclassed Keras models from its wheel, built, given the
    wheel's weights and never called, as its users hold them."""
    if importlib.util.find_spec("mtcnn") is None:
        return [{"model": "mtcnn", "route": "keras->*", "error": "mtcnn not installed"}]
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet
    from mtcnn.utils.tensorflow import load_weights

    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for name, cls, shape in (
        ("mtcnn_pnet", PNet, (2, 48, 64, 3)),
        ("mtcnn_rnet", RNet, (4, 24, 24, 3)),
        ("mtcnn_onet", ONet, (4, 48, 48, 3)),
    ):
        net = cls()
        net.build()
        net.set_weights(load_weights(name.split("_")[1] + ".lz4"))
        sample = rng.uniform(-1, 1, shape).astype(np.float32)
        for route, fn, suffix in (
            ("keras->onnx", keras_to_onnx, ".onnx"),
            ("keras->tflite", keras_to_tflite, ".tflite"),
        ):
            t0 = time.perf_counter()
            rep = fn(net, root / f"{name}{suffix}", inputs=[sample])
            rows.append(
                {
                    "model": name,
                    "source": "keras.Model subclass",
                    "route": route,
                    "max_abs_error": rep.max_abs_error,
                    "cosine": rep.cosine,
                    "layout": rep.layout,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    return rows


def _torch_parity(root: Path) -> list[dict[str, Any]]:
    """PyTorch -> TFLite with litert-torch: a digits CNN (NCHW) and transformers' ResNet."""
    if importlib.util.find_spec("litert_torch") is None:
        return [{"model": "torch", "route": "torch->tflite", "error": "litert-torch not installed"}]
    import torch
    import transformers
    from sklearn.datasets import load_digits

    from edgeinfer.convert import torch_to_tflite

    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
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
    digits = (load_digits().data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)[:16]
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10
    )
    resnet = transformers.ResNetForImageClassification(config)

    class Logits(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = resnet

        def forward(self, pixels: Any) -> Any:
            return self.net(pixel_values=pixels).logits

    images = np.random.default_rng(0).random((1, 3, 64, 64)).astype(np.float32)
    rows = []
    for name, module, x in (
        ("torch_digits_cnn", cnn, digits),
        ("hf_resnet_tiny", Logits(), images),
    ):
        t0 = time.perf_counter()
        try:
            rep = torch_to_tflite(module, x, root / f"{name}.tflite")
        except ConversionError as exc:
            rows.append({"model": name, "route": "torch->tflite", "error": str(exc)})
            continue
        rows.append(
            {
                "model": name,
                "source": "nn.Module",
                "route": "torch->tflite",
                "max_abs_error": rep.max_abs_error,
                "cosine": rep.cosine,
                "layout": rep.layout,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return rows


def _finetuned_float_int8(
    root: Path, h5: Path, trained: Any, epochs: int, lr: float, calib: np.ndarray
) -> dict[str, Any]:
    """The control: the same fine-tuning without fake quantization, then post-training int8."""
    import tf_keras

    model = tf_keras.models.load_model(h5)
    tf_keras.utils.set_random_seed(0)
    model.compile(tf_keras.optimizers.Adam(lr), "sparse_categorical_crossentropy")
    model.fit(trained.x_train, trained.y_train, epochs=epochs, batch_size=32, verbose=0)
    tuned = _save(model, root / f"{h5.stem}-tuned.h5")
    flt = keras_to_tflite(tuned, root / f"{h5.stem}-tuned.tflite")
    int8 = keras_to_tflite(
        tuned, root / f"{h5.stem}-tuned-int8.tflite", quantize="int8", calibration=[calib]
    )
    return {
        "float_accuracy": _accuracy(flt.path, trained.x_test, trained.y_test),
        "int8_accuracy": _accuracy(int8.path, trained.x_test, trained.y_test),
        "int8_size_bytes": int8.path.stat().st_size,
    }


def _ptq_vs_qat(root: Path, width: int, dense: int, epochs: int = 3) -> dict[str, Any]:
    from edgeinfer.optimize.qat_keras import KerasQAT

    trained = digits_cnn_tf_keras(width=width, dense=dense)
    h5 = _save(trained.model, root / f"digits-w{width}.h5")
    lr, calib = 1e-4, trained.x_train[:128]
    epoch_lines: list[str] = []
    started = time.perf_counter()
    outcome = optimize_tflite(
        h5,
        {"pixels": trained.x_test, "labels": trained.y_test},
        root / f"digits-w{width}-qat",
        calibration={"pixels": calib},
        config=SearchConfig(metric="accuracy", max_drop="0.5%", objective="size", memory=False),
        candidates=("int8",),
        qat=KerasQAT(
            train={"pixels": trained.x_train, "labels": trained.y_train},
            epochs=epochs,
            learning_rate=lr,
            on_epoch=lambda r: epoch_lines.append(f"epoch {r.epoch}: {r.logs}"),
        ),
        report=False,
    )
    seconds = time.perf_counter() - started
    result = outcome.result
    rows = {}
    for c in [result.baseline, *result.candidates]:
        ev = c.evaluation
        rows[c.name] = {
            "status": c.status,
            "reason": c.reason,
            "accuracy": ev.metrics["accuracy"] if ev else None,
            "size_bytes": ev.size_bytes if ev else None,
            "litert_ms": round(c.latency_ms, 4) if ev else None,
            "within_budget": c.within_budget,
            "build_seconds": round(c.build_seconds, 1),
        }
    params = int(sum(np.prod(w.shape) for w in trained.model.weights))  # type: ignore[attr-defined]
    return {
        "model": f"digits CNN (tf-keras), width {width}, dense {dense}, {params} weights",
        "epochs": epochs,
        "learning_rate": lr,
        "train_samples": len(trained.x_train),
        "search_seconds": round(seconds, 1),
        "epochs_logged": epoch_lines,
        "chosen": result.chosen.name,
        "message": result.message,
        "candidates": rows,
        "control_float_finetuned": _finetuned_float_int8(root, h5, trained, epochs, lr, calib),
    }


def _qat_section(root: Path) -> list[dict[str, Any]]:
    rows = []
    for width, dense in ((32, 128), (4, 16)):
        row = _ptq_vs_qat(root, width, dense)
        print("ptq vs qat:", row["model"], row["candidates"], row["control_float_finetuned"])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "qat", "conversions"), default="all")
    part = parser.parse_args().part
    if part in ("qat", "conversions"):
        previous = json.loads((RESULTS / "tflite.json").read_text())
        previous.pop("machine", None)
        with tempfile.TemporaryDirectory(prefix="bench-tflite-") as tmp:
            if part == "qat":
                previous["ptq_vs_qat"] = _qat_section(Path(tmp))
            else:
                previous["conversions"] = _parity(
                    Path(tmp), digits_cnn(width=32, dense=128), wine_mlp()
                )
                for row in previous["conversions"]:
                    print(row)
        print(f"wrote {write('tflite', previous)}")
        return
    # Wider than the tests' CNN (43k weights, not 7k): a flatbuffer's fixed overhead of a few
    # kB would otherwise decide the size ratio.
    cnn, mlp = digits_cnn(width=32, dense=128), wine_mlp()
    with tempfile.TemporaryDirectory(prefix="bench-tflite-") as tmp:
        root = Path(tmp)
        litert = _litert_vs_anchor(root, cnn)
        print("litert vs anchor:", litert["targets"], litert["cpu_ms_per_edgeinfer_call"])
        both = _onnx_beside_litert(root, cnn)
        print("onnx beside litert:", both)
        both["target_both"] = _both(root, cnn)
        print("--target both:", both["target_both"])
        parity = _parity(root, cnn, mlp)
        for row in parity:
            print(row)
        qat = _qat_section(root)
    path = write(
        "tflite",
        {
            "litert_vs_anchor": litert,
            "onnx_beside_litert": both,
            "conversions": parity,
            "ptq_vs_qat": qat,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
