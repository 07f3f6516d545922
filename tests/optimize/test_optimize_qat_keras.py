"""``edgeinfer optimize MODEL.h5 --qat --train TRAIN.npz``: quantization-aware training of a
tf-keras CNN trained here on scikit-learn's digits (tfmot), its full-INT8 conversion measured
on LiteRT beside post-training INT8, gated, reported side by side and bundled with its recipe;
and the one-line refusals (a Keras 3 model, a .tflite, training data that does not fit)."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")
# Not imported here: tfmot's import sets TF_USE_LEGACY_KERAS=1 for the whole test process
# (every later first use of tf.keras would get Keras 2); edgeinfer's loader contains that.
if importlib.util.find_spec("tensorflow_model_optimization") is None:
    pytest.skip("tensorflow-model-optimization is not installed", allow_module_level=True)

from edgeinfer.bundle import Bundle
from edgeinfer.cli.main import build_app, main
from edgeinfer.errors import InputError
from edgeinfer.optimize import SearchConfig
from edgeinfer.optimize.qat_keras import EpochReport, KerasQAT, keras_generation
from edgeinfer.optimize.tflite import optimize_tflite

pytestmark = pytest.mark.slow  # TensorFlow's import, two short trainings, conversions


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from keras_models import digits_cnn_tf_keras

    trained = digits_cnn_tf_keras()
    root = tmp_path_factory.mktemp("qat-digits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf-keras calls .h5 legacy
        trained.model.save(root / "digits.h5")  # type: ignore[attr-defined]
    np.savez(root / "eval.npz", pixels=trained.x_test, labels=trained.y_test)
    np.savez(root / "train.npz", pixels=trained.x_train, labels=trained.y_train)
    np.save(root / "calib.npy", trained.x_train[:200])
    return {p.stem: p for p in root.iterdir()}


def _invoke(*args: str) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(build_app(), list(args))


def test_qat_competes_beside_post_training_int8(digits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "digits-qat"
    result = _invoke(
        "optimize", str(digits["digits"]), "--eval", str(digits["eval"]),
        "--calibration", str(digits["calib"]), "--metric", "accuracy", "--max-drop", "0.5%",
        "--objective", "size", "--repeats", "5", "--candidates", "int8",
        "--qat", "--train", str(digits["train"]), "--epochs", "2", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # a progress line per epoch, on stderr
    epochs = [ln for ln in result.stderr.splitlines() if ln.startswith("qat-int8: epoch")]
    assert [ln.split(":")[1].strip() for ln in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "loss" in epochs[0] and "accuracy" in epochs[0]
    report_dir = out.parent / f"{out.name}-report"
    report = json.loads((report_dir / "report.json").read_text())
    by_name = {c["name"]: c for c in report["candidates"]}
    qat, ptq = by_name["qat-int8"], by_name["int8"]
    for cand in (qat, ptq):  # both measured on LiteRT over the same eval set
        assert cand["status"] == "ok"
        assert 0.8 < cand["evaluation"]["metrics"]["accuracy"] <= 1.0
        assert (
            cand["evaluation"]["size_bytes"] < 0.5 * by_name["original"]["evaluation"]["size_bytes"]
        )
    steps = qat["recipe"]["steps"]
    assert [s["pass"] for s in steps] == ["qat", "tflite_convert"]
    assert steps[0]["epochs"] == 2 and steps[0]["train_samples"] == 1400
    assert steps[0]["loss"] == "sparse_categorical_crossentropy"
    assert steps[1] == ptq["recipe"]["steps"][0]  # converted as post-training int8 is
    md = (report_dir / "report.md").read_text()
    assert "## Post-training vs quantization-aware: int8 and qat-int8" in md
    section = md.split("## Post-training vs quantization-aware")[1]
    acc = {n: by_name[n]["evaluation"]["metrics"]["accuracy"] for n in ("int8", "qat-int8")}
    assert f"| accuracy | {acc['int8']:.4f}" in section
    assert f"| {acc['qat-int8']:.4f}" in section
    assert "2 epochs on 1400 samples" in section
    assert report["chosen"] in ("original", "int8", "qat-int8")


def test_qat_winner_bundled_with_its_recipe(digits: dict[str, Path], tmp_path: Path) -> None:
    seen: list[EpochReport] = []
    with np.load(digits["train"]) as z:  # unlabelled: it learns the float model's outputs
        train = {"pixels": z["pixels"][:600]}
    outcome = optimize_tflite(
        digits["digits"],
        digits["eval"],
        tmp_path / "qat-only",
        config=SearchConfig(
            metric="accuracy", max_drop="5%", objective="size", repeats=3, memory=False
        ),
        candidates=(),
        qat=KerasQAT(train=train, epochs=1, on_epoch=seen.append),
        report=False,
    )
    assert [(r.epoch, r.epochs) for r in seen] == [(1, 1)] and "loss" in seen[0].logs
    assert outcome.result.chosen.name == "qat-int8", outcome.result.message
    manifest = json.loads((outcome.bundle.path / "manifest.json").read_text())
    recipe = manifest["provenance"]["recipe"]
    assert recipe["candidate"] == "qat-int8"
    qat_step = recipe["steps"][0]
    assert qat_step["pass"] == "qat" and qat_step["epochs"] == 1
    assert qat_step["loss"] == "mse to the float model's outputs"
    assert qat_step["framework"].startswith("tfmot ")
    # the QAT model is a full-INT8 .tflite fed and read with floats, like the source
    from edgeinfer.convert import inspect_tflite

    info = inspect_tflite(Bundle.open(outcome.bundle.path).model_path)
    assert info.quantized and not info.int_io


def test_keras_generation_read_from_the_files(digits: dict[str, Path], tmp_path: Path) -> None:
    import keras

    assert keras_generation(digits["digits"]) == 2
    k3 = keras.Sequential([keras.Input((4,), name="f"), keras.layers.Dense(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's copy keyword; .h5 called legacy
        k3.save(tmp_path / "k3.keras")
        k3.save(tmp_path / "k3.h5")
    assert keras_generation(tmp_path / "k3.keras") == 3
    assert keras_generation(tmp_path / "k3.h5") == 3
    import h5py
    import tensorflow as tf

    with h5py.File(tmp_path / "old.h5", "w") as f:  # Keras 2 before it wrote its version
        f.attrs["model_config"] = "{}"
    assert keras_generation(tmp_path / "old.h5") == 2
    plain = tf.Module()
    plain.v = tf.Variable(1.0)
    tf.saved_model.save(plain, str(tmp_path / "plain"))  # TensorFlow's, no Keras inside
    assert keras_generation(tmp_path / "plain") is None
    with pytest.raises(InputError, match="no tf-keras model inside"):
        optimize_tflite(
            tmp_path / "plain", digits["eval"], tmp_path / "o", qat=KerasQAT(train=digits["train"])
        )


def _refused(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path], model: Path, *extra: str
) -> str:
    """Run the CLI as a user does; the one error line it printed (exit code 2)."""
    out = digits["eval"].parent / "refused"
    args = ["optimize", str(model), "--eval", str(digits["eval"]), "--out", str(out), *extra]
    with pytest.raises(SystemExit) as exc:
        main(args)
    text = capsys.readouterr()
    assert exc.value.code == 2, text
    lines = [ln for ln in (text.out + text.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text.err, text
    assert not out.exists()
    return lines[0]


def test_keras3_model_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path], tmp_path: Path
) -> None:
    import keras

    k3 = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Flatten()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        k3.save(tmp_path / "k3.keras")
    line = _refused(capsys, digits, tmp_path / "k3.keras", "--qat", "--train", str(digits["train"]))
    assert "Keras 3 model" in line and "tf-keras (Keras 2)" in line


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.zeros((8, 8, 8, 1), np.float32)}, "training data (--train): .*'pixels'"),
        ({"pixels": np.zeros((8, 28, 28, 1), np.float32)}, "training data (--train): .*pixels"),
        (
            {"pixels": np.zeros((8, 8, 8, 1), np.float32), "labels": np.zeros(5, np.int64)},
            "labels: 5 labels for 8 training data",
        ),
    ],
    ids=["missing-input", "wrong-shape", "label-count"],
)
def test_bad_training_data_refused_in_one_line(
    capsys: pytest.CaptureFixture[str],
    digits: dict[str, Path],
    tmp_path: Path,
    arrays: dict[str, np.ndarray],
    message: str,
) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
    line = _refused(capsys, digits, digits["digits"], "--qat", "--train", str(tmp_path / "bad.npz"))
    import re

    assert re.search(re.escape(message).replace(r"\.\*", ".*"), line), line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--qat",), "--qat needs --train TRAIN.npz"),
        (("--train", "t.npz"), "--train apply only with --qat"),
        (("--qat", "--train", "t.npz", "--target", "onnx"), "use --target tflite"),
    ],
)
def test_flag_misuse_refused(
    capsys: pytest.CaptureFixture[str],
    digits: dict[str, Path],
    extra: tuple[str, ...],
    message: str,
) -> None:
    assert message in _refused(capsys, digits, digits["digits"], *extra)


def test_tflite_source_refused(digits: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")  # refused by its kind before it is read
    with pytest.raises(InputError, match="a .tflite has nothing to train"):
        optimize_tflite(model, digits["eval"], tmp_path / "o", qat=KerasQAT(train=digits["train"]))


def test_search_without_qat_names_it_when_post_training_int8_misses() -> None:
    from edgeinfer.optimize.candidate import Candidate
    from edgeinfer.optimize.tflite import _qat_hint

    def cand(name: str, within: bool) -> Candidate:
        return Candidate(name, status="ok", within_budget=within)

    missed = _qat_hint([cand("float16", True), cand("int8", False), cand("int8-io", False)])
    assert len(missed) == 1 and "(int8, int8-io) missed the budget" in missed[0]
    assert "--qat --train TRAIN.npz" in missed[0]
    assert _qat_hint([cand("int8", False), cand("aeq-static-wi8-ai8", True)]) == []
    assert _qat_hint([cand("float16", False)]) == []  # no full-INT8 candidate measured


def test_loading_tfmot_leaves_the_process_on_keras_3() -> None:
    """tfmot's import sets TF_USE_LEGACY_KERAS=1 for the process; after edgeinfer loads it,
    tf.keras (first touched later, as a caller's code or a converter would) is still Keras 3."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from edgeinfer.optimize.qat_keras import _import_tfmot\n"
        "tf_keras, tfmot = _import_tfmot()\n"
        "import tensorflow as tf\n"
        "print(os.environ.get('TF_USE_LEGACY_KERAS'), tf.keras.Model.__module__, "
        "tf_keras.__version__[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    legacy, module, tfmot_keras = out.stdout.split()
    assert legacy == "None" and module.startswith("keras.src"), out.stdout
    assert tfmot_keras == "2"
