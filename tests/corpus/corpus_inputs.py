"""Realistic inputs for the corpus models, made here from real material, never downloaded.

- images: text lines and pages rendered with Pillow's built-in font (real glyphs: the
  OCR models see what they were trained on), a photo-like scene of skin-toned shapes on
  a textured background for the detector, and drawn portraits (a face with eyes, brows,
  nose and mouth over shoulders) and open hands for MediaPipe's face, selfie and hand models;
- audio: English speech synthesized by espeak-ng (``scripts/system-deps.sh`` installs it);
  where it is missing, edgeinfer's deterministic speech-like signal stands in;
- text: the bytes of Python's own standard-library sources, the kind of file magika types;
- tabular: scikit-learn's bundled real datasets (breast cancer, diabetes, digits).

Every maker is deterministic for a seed.
"""

from __future__ import annotations

import functools
import random
import sysconfig
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from edgeinfer.zoo import audio as zaudio
from edgeinfer.zoo._sentences import sentences

__all__ = [
    "detector_scene",
    "hand_image",
    "normalize",
    "portrait",
    "source_bytes",
    "speech",
    "text_line",
    "text_page",
    "to_chw",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow ships a scalable font (no system fonts needed).
    return ImageFont.load_default(size=size)


def text_line(words: str, height: int, width: int, seed: int = 0) -> Image.Image:
    """One line of dark text on a light, slightly noisy background, ``height`` x ``width``."""
    rng = np.random.default_rng(seed)
    bg = int(rng.integers(210, 250))
    img = Image.new("RGB", (width, height), (bg, bg, bg - 8))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    draw.text((4, height // 8), words, fill=ink, font=_font(int(height * 0.62)))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def text_page(height: int, width: int, seed: int = 0) -> Image.Image:
    """A page of several text lines (real English sentences) at a few sizes."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (245, 243, 238))
    draw = ImageDraw.Draw(img)
    y = 6
    for sentence in sentences(12, seed=seed):
        size = rng.choice((14, 18, 22))
        draw.text((rng.randint(4, 20), y), sentence[:40], fill=(20, 20, 30), font=_font(size))
        y += size + rng.randint(6, 14)
        if y > height - 24:
            break
    return img


def detector_scene(size: int, seed: int = 0) -> Image.Image:
    """A photo-like scene: textured background, skin-toned body-like blobs, soft focus."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(60, 180, 3)
    bg = base[None, None, :] + 40 * np.sin(6 * xx + 3 * yy)[..., None]
    bg += rng.normal(0, 10, (size, size, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        skin = tuple(int(rng.integers(lo, lo + 60)) for lo in (180, 130, 100))
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        w, h = rng.uniform(0.08, 0.25, 2) * size
        draw.ellipse((cx - w, cy - h, cx + w, cy + h), fill=skin)
    return img.filter(ImageFilter.GaussianBlur(1.2))


def _backdrop(size: int, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, 3)
    bg = base[None, None, :] + 30 * np.cos(5 * xx - 2 * yy)[..., None]
    bg += rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))


def portrait(size: int, seed: int = 0) -> Image.Image:
    """A frontal head and shoulders, drawn: skin-toned face with eyes, brows, nose, mouth
    and hair over a shirt, on a textured background (soft focus, like a webcam frame)."""
    rng = np.random.default_rng(seed)
    img = _backdrop(size, rng)
    draw = ImageDraw.Draw(img)
    skin = tuple(int(rng.integers(lo, lo + 50)) for lo in (170, 120, 90))
    shirt = tuple(int(v) for v in rng.integers(20, 120, 3))
    s = size / 256
    cx = size / 2 + rng.uniform(-12, 12) * s
    draw.ellipse((cx - 120 * s, 200 * s, cx + 120 * s, 330 * s), fill=shirt)  # shoulders
    draw.rectangle((cx - 22 * s, 150 * s, cx + 22 * s, 215 * s), fill=skin)  # neck
    draw.ellipse((cx - 62 * s, 28 * s, cx + 62 * s, 112 * s), fill=(40, 28, 20))  # hair
    draw.ellipse((cx - 55 * s, 45 * s, cx + 55 * s, 185 * s), fill=skin)  # face
    for side in (-1, 1):
        ex = cx + side * 24 * s
        draw.ellipse((ex - 11 * s, 96 * s, ex + 11 * s, 106 * s), fill=(245, 245, 240))
        draw.ellipse((ex - 5 * s, 96 * s, ex + 5 * s, 106 * s), fill=(50, 35, 25))
        draw.line((ex - 13 * s, 86 * s, ex + 13 * s, 84 * s), fill=(50, 35, 25), width=int(4 * s))
    draw.polygon(
        [(cx, 108 * s), (cx - 9 * s, 138 * s), (cx + 9 * s, 138 * s)],
        fill=tuple(max(0, c - 25) for c in skin),
    )
    draw.chord((cx - 20 * s, 145 * s, cx + 20 * s, 165 * s), 0, 180, fill=(160, 60, 60))
    return img.filter(ImageFilter.GaussianBlur(1.0 * s))


def hand_image(size: int, seed: int = 0) -> Image.Image:
    """An open right hand, drawn: palm, four spread fingers and a thumb, filling the crop as
    a palm detector's crop would."""
    rng = np.random.default_rng(seed)
    img = _backdrop(size, rng)
    draw = ImageDraw.Draw(img)
    skin = tuple(int(rng.integers(lo, lo + 50)) for lo in (170, 120, 90))
    s = size / 224
    cx, cy = size / 2 + rng.uniform(-8, 8) * s, 140 * s
    draw.ellipse((cx - 52 * s, cy - 50 * s, cx + 52 * s, cy + 55 * s), fill=skin)  # palm
    for dx, length in ((-36, 70), (-12, 86), (12, 82), (36, 64)):
        x = cx + dx * s
        top = cy - 40 * s - length * s
        draw.rounded_rectangle((x - 10 * s, top, x + 10 * s, cy - 20 * s), 10 * s, fill=skin)
        crease = tuple(max(0, c - 30) for c in skin)
        for k in (1, 2):  # knuckle creases
            y = top + k * length * s / 3
            draw.line((x - 8 * s, y, x + 8 * s, y), fill=crease, width=max(1, int(2 * s)))
    thumb = [(cx - 45 * s, cy + 10 * s), (cx - 95 * s, cy - 30 * s), (cx - 85 * s, cy - 45 * s),
             (cx - 35 * s, cy - 15 * s)]  # fmt: skip
    draw.polygon(thumb, fill=skin)
    draw.rectangle((cx - 30 * s, cy + 50 * s, cx + 30 * s, size), fill=skin)  # wrist
    return img.filter(ImageFilter.GaussianBlur(0.8 * s))


def to_chw(img: Image.Image) -> np.ndarray:
    """RGB image -> float32 [3, H, W] in 0..255."""
    return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1).copy()


def normalize(
    chw: np.ndarray, mean: tuple[float, ...] = (0.5,) * 3, std: tuple[float, ...] = (0.5,) * 3
) -> np.ndarray:
    """0..255 [3, H, W] -> (x / 255 - mean) / std, float32 (Paddle's NormalizeImage)."""
    m = np.array(mean, np.float32)[:, None, None]
    s = np.array(std, np.float32)[:, None, None]
    return ((chw / 255.0 - m) / s).astype(np.float32)


@functools.lru_cache(maxsize=8)
def speech(text: str) -> np.ndarray:
    """``text`` spoken at 16 kHz, float32 in [-1, 1]: espeak-ng, or the speech-like signal."""
    try:
        pcm = zaudio.speak(text)
    except zaudio.SpeechSynthesisError:
        pcm = zaudio.to_int16(zaudio.speech_like(0.4 + 0.08 * len(text.split()), seed=len(text)))
    return zaudio.to_float(pcm)


def source_bytes(n: int, seed: int = 0) -> list[bytes]:
    """The bytes of ``n`` standard-library source files (real text files of one known type)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 4096)
    picked = random.Random(seed).sample(files, n)
    return [p.read_bytes() for p in picked]
