"""The zoo package: lazy submodules, the model list, one build entry point, audio helpers."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from edgeinfer import EdgeInferError, zoo
from edgeinfer.zoo import ZooError, audio


def test_importing_the_zoo_loads_no_heavy_dependency() -> None:
    code = (
        "import sys\n"
        "from edgeinfer import zoo\n"
        "assert set(zoo.MODELS) == {'digits', 'sensor', 'fraud', 'minilm', 'vad', 'wakeword'}\n"
        "zoo.digits, zoo.vad, zoo.wakeword, zoo.minilm\n"  # modules import, heavy deps wait
        "heavy = {'torch', 'sklearn', 'transformers', 'ai_edge_litert', 'scipy'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_models_have_one_line_descriptions() -> None:
    for name, text in zoo.MODELS.items():
        assert text and "\n" not in text, name
        assert name in dir(zoo)
    assert sorted(zoo.__all__) == zoo.__all__


def test_build_dispatches_by_name(tmp_path: Path) -> None:
    bundle = zoo.build("vad", tmp_path / "vad", version=3)
    assert bundle.name == "silero-vad" and bundle.version == 3
    with pytest.raises(ZooError, match="unknown example model 'resnet'"):
        zoo.build("resnet", tmp_path / "x")
    with pytest.raises(AttributeError):
        _ = zoo.nothing_here  # type: ignore[attr-defined]
    assert issubclass(ZooError, EdgeInferError)


def test_wav_round_trip_and_resampling(tmp_path: Path) -> None:
    pytest.importorskip("scipy.signal")
    t = np.arange(22050) / 22050
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(tone.tobytes())
    pcm = audio.read_wav(path)
    assert pcm.dtype == np.int16 and abs(len(pcm) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / len(pcm) - 440) < 2  # still a 440 Hz tone
    assert np.array_equal(audio.to_int16(audio.to_float(pcm)), pcm)
    path.write_bytes(b"not a wav")
    with pytest.raises(ZooError, match="not a readable WAV"):
        audio.read_wav(path)


def test_speech_like_is_deterministic() -> None:
    pytest.importorskip("scipy.signal")
    a = audio.speech_like(0.5, seed=3)
    assert a.dtype == np.float32 and len(a) == 8000
    assert np.array_equal(a, audio.speech_like(0.5, seed=3))
    assert np.abs(a).max() == pytest.approx(0.3, rel=1e-3)


@pytest.mark.skipif(not audio.espeak_available(), reason="espeak-ng is not installed")
def test_speak_gives_padded_16khz_speech() -> None:
    speech = audio.speak("hello", pad=0.25)
    assert speech.dtype == np.int16
    assert np.all(speech[:4000] == 0) and np.all(speech[-4000:] == 0)
    assert np.abs(speech[4000:-4000]).max() > 1000
