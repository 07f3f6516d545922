"""Fixtures for the optimize tests: the digits CNN (trained once, cached) and its data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from edgeinfer import zoo

    return zoo.digits.load_data()


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    """The trained digits CNN as an ONNX file (pixels [N,1,8,8] -> logits [N,10])."""
    from edgeinfer import zoo

    return zoo.digits.model_path()


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeinfer import zoo

    return zoo.digits.build(tmp_path_factory.mktemp("bundles") / "digits-cnn").path


_WORDS = [
    "edge",
    "inference",
    "model",
    "device",
    "invoice",
    "total",
    "amount",
    "date",
    "receipt",
    "line",
    "number",
    "2026",
    "0123",
    "4567",
    "89",
    "OCR",
    "text",
    "budget",
    "latency",
]


def text_images(n: int, height: int, width: int, seed: int = 0, lines: bool = False) -> np.ndarray:
    """``n`` rendered text images, float32 [n, 3, height, width], normalized as PP-OCR
    feeds its models ((pixel / 255 - 0.5) / 0.5): dark words on light paper, one line
    per image (``lines``: what the classifier and recognizer read) or a page of lines
    (what the detector reads). Real glyphs from matplotlib's bundled DejaVu font."""
    import os

    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font_file = os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data/fonts/ttf/DejaVuSans.ttf"
    )
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        paper = tuple(int(v) for v in rng.integers(190, 256, 3))
        img = Image.new("RGB", (width, height), paper)
        draw = ImageDraw.Draw(img)
        y = int(height * 0.15) if lines else int(rng.integers(1, 6))
        while y < height - 8:
            size = int(height * 0.6) if lines else int(rng.integers(9, 18))
            text = " ".join(rng.choice(_WORDS, int(rng.integers(1, 4))))
            ink = tuple(int(v) for v in rng.integers(0, 90, 3))
            font = ImageFont.truetype(font_file, size)
            draw.text((int(rng.integers(1, 8)), y), text, fill=ink, font=font)
            if lines:
                break
            y += size + int(rng.integers(3, 12))
        if lines and i % 2:
            img = img.rotate(180)  # the classifier's other class: upside down
        pixels = np.asarray(img, np.float32) / 255.0
        out[i] = ((pixels - 0.5) / 0.5).transpose(2, 0, 1)
    return out


@pytest.fixture(scope="session")
def ocr_images() -> Callable[..., np.ndarray]:
    return text_images
