"""Silero VAD from the silero-vad package: runs in ONNX Runtime, tells speech from silence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.zoo import ZooError, audio, vad

pytest.importorskip("scipy.signal")


@pytest.fixture(scope="module")
def model() -> edgeinfer.Model:
    return edgeinfer.load(vad.model_path(), providers=["cpu"])


def test_signature_is_plain_tensors(model: edgeinfer.Model) -> None:
    specs = {s.name: s for s in model.inputs}
    assert specs["input"].dtype == "float32" and len(specs["input"].shape or ()) == 2
    assert specs["state"].shape == (2, None, 128)
    assert specs["sr"].dtype == "int64" and specs["sr"].shape == ()
    assert [s.name for s in model.outputs] == ["output", "stateN"]


def test_silence_is_not_speech(model: edgeinfer.Model) -> None:
    probs = vad.speech_probabilities(np.zeros(32000, dtype=np.int16), model)
    assert len(probs) == 32000 // 512
    assert probs.max() < 0.1


def test_speech_like_audio_is_speech(model: edgeinfer.Model) -> None:
    voiced = vad.speech_probabilities(audio.speech_like(2.0, seed=1), model)
    rng = np.random.default_rng(0)
    noise = vad.speech_probabilities((0.01 * rng.standard_normal(32000)).astype(np.float32), model)
    assert voiced.max() > 0.9
    assert voiced.mean() > noise.mean() + 0.2


@pytest.mark.skipif(not audio.espeak_available(), reason="espeak-ng is not installed")
def test_synthesized_speech_is_speech(model: edgeinfer.Model) -> None:
    speech = audio.speak("The quick brown fox jumps over the lazy dog.", pad=0.5)
    probs = vad.speech_probabilities(speech, model)
    lead = int(0.5 * audio.SAMPLE_RATE) // 512 - 1  # chunks of leading silence
    assert probs[:lead].max() < 0.2
    assert probs[lead:].max() > 0.9


def test_bundle_golden_sample(tmp_path: Path) -> None:
    bundle = vad.build(tmp_path / "vad")
    golden = bundle.golden()
    assert golden is not None
    silence, voiced = golden.outputs["output"][:, 0]
    assert silence < voiced
    with edgeinfer.load(bundle.path) as model:
        assert bundle.check_golden(model) == []


def test_bad_input_is_refused(model: edgeinfer.Model) -> None:
    with pytest.raises(ZooError, match="sample_rate"):
        vad.speech_probabilities(np.zeros(1024, np.float32), model, sample_rate=44100)
    with pytest.raises(ZooError, match="mono"):
        vad.speech_probabilities(np.zeros((2, 1024), np.float32), model)
