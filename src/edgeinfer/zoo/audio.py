"""Audio for the speech example models: WAV reading, resampling, speech-like test signals and
real synthesized speech (espeak-ng).

Everything works on mono 16 kHz audio, the rate the voice-activity and wake-word models
expect. :func:`speech_like` makes a deterministic voiced signal (a glottal pulse train with
a moving pitch, shaped by vowel formants, in syllables) without any external tool;
:func:`speak` runs the ``espeak-ng`` speech synthesizer when it is installed (a system
package: ``apt-get install espeak-ng``) and raises :class:`SpeechSynthesisError` when not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from math import gcd
from pathlib import Path

import numpy as np

from edgeinfer.zoo._common import ZooError, require

__all__ = [
    "SAMPLE_RATE",
    "SpeechSynthesisError",
    "espeak_available",
    "read_wav",
    "resample",
    "speak",
    "speech_like",
    "to_float",
    "to_int16",
]

SAMPLE_RATE = 16000  # Hz
# (F1, F2, F3) in Hz of a few English vowels: /a/, /i/, /u/, /e/, /o/-ish.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
           (570, 840, 2410))  # fmt: skip
_BANDWIDTHS = (80.0, 90.0, 120.0)  # Hz, formant bandwidths


class SpeechSynthesisError(ZooError):
    """espeak-ng is not installed or failed to synthesize speech."""


def to_float(audio: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1); float input is returned as float32."""
    a = np.asarray(audio)
    if a.dtype == np.int16:
        return (a.astype(np.float32) / 32768.0).astype(np.float32)
    if a.dtype.kind != "f":
        raise ZooError(f"audio must be int16 or float samples, got {a.dtype}")
    return a.astype(np.float32)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16 (clipped); int16 input is returned as is."""
    a = np.asarray(audio)
    if a.dtype == np.int16:
        return a
    if a.dtype.kind != "f":
        raise ZooError(f"audio must be int16 or float samples, got {a.dtype}")
    return np.clip(np.round(a * 32767.0), -32768, 32767).astype(np.int16)


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono audio from ``rate`` to ``target`` Hz (polyphase; keeps int16 as int16)."""
    if rate == target:
        return np.asarray(audio)
    signal = require("scipy.signal", "scipy", "models", "Resampling audio")
    g = gcd(int(rate), int(target))
    was_int = np.asarray(audio).dtype == np.int16
    x = np.asarray(audio, dtype=np.float64)
    y = np.asarray(signal.resample_poly(x, target // g, rate // g), dtype=np.float64)
    if was_int:
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)
    return y.astype(np.float32)


def read_wav(path: str | os.PathLike[str], target: int = SAMPLE_RATE) -> np.ndarray:
    """A 16-bit PCM WAV file as mono int16 at ``target`` Hz (channels averaged)."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            frames = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ZooError(f"{path}: not a readable WAV file ({exc})") from exc
    if width != 2:
        raise ZooError(f"{path}: expected 16-bit PCM, got {8 * width}-bit samples")
    audio = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)
    mono = audio[:, 0] if channels == 1 else audio.mean(axis=1).astype(np.int16)
    return resample(mono, rate, target)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on ``PATH``."""
    return shutil.which("espeak-ng") is not None


def speak(
    text: str,
    *,
    voice: str = "en-us",
    speed: int = 140,  # words per minute
    pitch: int = 50,  # 0..99
    pad: float = 0.5,  # seconds of silence before and after
) -> np.ndarray:
    """``text`` spoken by espeak-ng: mono int16 at 16 kHz, padded with silence."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechSynthesisError(
            "speech synthesis needs the espeak-ng program, which is not installed "
            "(on Debian/Ubuntu: apt-get install espeak-ng)"
        )
    with tempfile.TemporaryDirectory(prefix="edgeinfer-speak-") as tmp:
        out = Path(tmp) / "speech.wav"
        cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", os.fspath(out), text]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            err = getattr(exc, "stderr", b"") or b""
            raise SpeechSynthesisError(
                f"espeak-ng failed for voice {voice!r}: {err.decode(errors='replace').strip()}"
            ) from exc
        audio = read_wav(out)
    silence = np.zeros(int(pad * SAMPLE_RATE), dtype=np.int16)
    return np.concatenate([silence, audio, silence])


def speech_like(seconds: float = 1.0, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """A voiced, speech-like signal: float32 at 16 kHz, peak ``level``.

    A glottal pulse train (fundamental 100-140 Hz with a slow pitch contour) goes through
    three formant resonators per vowel, one vowel per 250 ms syllable with a smooth
    envelope, plus a little breath noise. Voice-activity detectors take it for speech.
    """
    signal = require("scipy.signal", "scipy", "models", "Synthesizing speech-like audio")
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(100, 140) + 20 * np.sin(2 * np.pi * rng.uniform(0.5, 1.0) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    source = np.zeros(n)
    for k in range(1, 40):  # harmonics of the glottal pulse, falling off as 1/k
        source += np.sin(k * phase) / k
    syllable = SAMPLE_RATE // 4
    out = np.zeros(n)
    for start in range(0, n, syllable):
        seg = source[start : start + syllable]
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
        voiced = np.zeros_like(seg)
        for freq, bw in zip(formants, _BANDWIDTHS, strict=True):
            r = np.exp(-np.pi * bw / SAMPLE_RATE)
            theta = 2 * np.pi * freq / SAMPLE_RATE
            voiced += signal.lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], seg)
        envelope = np.sin(np.pi * np.arange(len(seg)) / len(seg)) ** 0.5
        out[start : start + len(seg)] = voiced * envelope
    out += 0.002 * np.abs(out).max() * rng.standard_normal(n)
    peak = np.abs(out).max()
    return (level * out / (peak if peak > 0 else 1.0)).astype(np.float32)
