"""Wake-word spotting on LiteRT: espeak-ng saying "okay nabu" is detected; other audio is not.

The tests synthesize real speech with espeak-ng (a system package; CI installs it) and run
pymicro-wakeword's .tflite models through edgeinfer's LiteRT backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.zoo import ZooError, audio, wakeword

pytest.importorskip("ai_edge_litert")
pytest.importorskip("pymicro_features")

needs_espeak = pytest.mark.skipif(
    not audio.espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


@pytest.fixture(scope="module")
def okay_nabu() -> edgeinfer.Model:
    return edgeinfer.load(wakeword.model_path("okay_nabu"), threads=1)


def test_features_are_40_channels_every_10_ms() -> None:
    rows = wakeword.features(audio.speech_like(1.0))
    assert rows.dtype == np.float32 and rows.shape[1] == 40
    assert 95 <= rows.shape[0] <= 100  # 30 ms windows stepped by 10 ms


@needs_espeak
@pytest.mark.parametrize(("voice", "speed"), [("en-us", 140), ("en-gb", 160), ("en-us", 120)])
def test_okay_nabu_is_detected(okay_nabu: edgeinfer.Model, voice: str, speed: int) -> None:
    speech = audio.speak("okay nabu", voice=voice, speed=speed)
    detected, probability = wakeword.detect(speech, okay_nabu)
    assert detected, f"max probability {probability:.3f}"
    assert probability > wakeword.config("okay_nabu").probability_cutoff


def test_silence_is_not_detected(okay_nabu: edgeinfer.Model) -> None:
    detected, probability = wakeword.detect(np.zeros(3 * 16000, dtype=np.int16), okay_nabu)
    assert not detected and probability < 0.1


@needs_espeak
@pytest.mark.parametrize("phrase", ["the weather is nice today", "okay google", "hello there"])
def test_other_phrases_are_not_detected(okay_nabu: edgeinfer.Model, phrase: str) -> None:
    detected, probability = wakeword.detect(audio.speak(phrase), okay_nabu)
    assert not detected, f"{phrase!r}: probability {probability:.3f}"


@needs_espeak
def test_each_model_listens_for_its_own_word() -> None:
    speech = audio.speak("okay nabu")
    assert not wakeword.detect(speech, "hey_jarvis")[0]
    assert wakeword.detect(audio.speak("alexa"), "alexa")[0]


@needs_espeak
def test_agrees_with_the_packages_own_runner(okay_nabu: edgeinfer.Model) -> None:
    """pymicro-wakeword runs the same model with its own TFLite C library and feature loop."""
    pymicro = pytest.importorskip("pymicro_wakeword")
    speech = audio.speak("okay nabu")
    runner = pymicro.MicroWakeWord.from_builtin(pymicro.Model.OKAY_NABU)
    frontend = pymicro.MicroWakeWordFeatures()
    theirs = [
        runner.process_streaming_prob(f) for f in frontend.process_streaming(speech.tobytes())
    ]
    runner.close()
    detected, ours = wakeword.detect(speech, okay_nabu)
    best = max(p for p in theirs if p is not None)
    # Two TFLite builds may round an int8 kernel differently: allow one output step (1/256).
    assert best == pytest.approx(ours, abs=1 / 256)
    assert detected == (best > wakeword.config("okay_nabu").probability_cutoff)


def test_model_state_is_reset_between_clips(okay_nabu: edgeinfer.Model) -> None:
    clip = audio.to_int16(audio.speech_like(1.5, seed=4))
    first = wakeword.probabilities(clip, okay_nabu)
    second = wakeword.probabilities(clip, okay_nabu)
    assert np.array_equal(first, second)


def test_bundle_keeps_config_and_golden(tmp_path: Path) -> None:
    bundle = wakeword.build(tmp_path / "okay-nabu")
    assert bundle.manifest.format == "tflite"
    assert bundle.manifest.metrics["probability_cutoff"] == 0.85
    assert [f.file for f in bundle.manifest.files] == ["wakeword.json"]
    with edgeinfer.load(bundle.path) as model:
        assert bundle.check_golden(model) == []
        assert wakeword.detect(np.zeros(16000, np.int16), model) == (False, 0.0)


def test_bad_names_and_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="unknown wake word model"):
        wakeword.model_path("hey_siri")
    renamed = tmp_path / "custom.tflite"
    renamed.write_bytes(wakeword.model_path("okay_nabu").read_bytes())
    with pytest.raises(ZooError, match="cutoff"):
        wakeword.detect(np.zeros(16000, np.int16), renamed)
    assert wakeword.detect(np.zeros(16000, np.int16), renamed, cutoff=0.5, window=3)[0] is False
