"""The LiteRT call path: Model.predict's per-signature fast path and the backend's native
calls give the bare interpreter's results, and bad inputs still get one-line errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import BackendError, InputError

wakeword = pytest.importorskip("pymicro_wakeword", reason="needs the 'models' extra")
litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs the 'litert' extra")

MODEL = Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"


def _mel() -> Path:
    oww = pytest.importorskip("wyoming_openwakeword", reason="wyoming-openwakeword (--no-deps)")
    path = Path(oww.__file__).parent / "models" / "melspectrogram.tflite"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def _bare_stream(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The bare interpreter on a stream, from a fresh state: the reference."""
    interp = litert.Interpreter(model_path=str(MODEL), num_threads=1)
    interp.allocate_tensors()
    i = interp.get_input_details()[0]["index"]
    o = interp.get_output_details()[0]["index"]
    out = []
    for f in frames:
        interp.set_tensor(i, f)
        interp.invoke()
        out.append(interp.get_tensor(o))
    return out


def _speech_frames() -> tuple[list[np.ndarray], bool]:
    """The model's int8 input frames for "okay nabu" said by espeak-ng (else speech-like
    noise, on which the detector stays at 0), and whether it is the real word."""
    from edgeinfer.zoo import audio, wakeword

    spoken = audio.espeak_available()
    clip = audio.speak("okay nabu") if spoken else audio.speech_like(2.0)
    scale, zero = _input_quantization()
    rows = wakeword.quantize(wakeword.features(clip), scale, zero)
    return [rows[i : i + 3][None] for i in range(0, len(rows) - 2, 3)], spoken


def _input_quantization() -> tuple[float, int]:
    interp = litert.Interpreter(model_path=str(MODEL))
    scale, zero = interp.get_input_details()[0]["quantization"]
    return float(scale), int(zero)


def test_fast_path_streams_exactly_as_the_bare_interpreter() -> None:
    frames, spoken = _speech_frames()
    expected = _bare_stream(frames)
    if spoken:
        assert len({int(e[0, 0]) for e in expected}) > 10  # the detector's output moves
    with edgeinfer.load(MODEL, threads=1) as model:
        name = model.inputs[0].name
        # Arrays, one-entry dicts and a Fortran-ordered copy (not C-contiguous, so it
        # takes the validator's path) interleave on one stream.
        got = []
        for k, f in enumerate(frames):
            feed = f if k % 3 == 0 else {name: f} if k % 3 == 1 else np.asfortranarray(f)
            (value,) = model.predict(feed).values()
            got.append(value)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)
        assert g.dtype == np.uint8


def test_bad_inputs_after_the_signature_is_known_still_get_one_line_errors() -> None:
    with edgeinfer.load(MODEL, threads=1) as model:
        good = np.zeros((1, 3, 40), np.int8)
        model.predict(good)
        model.predict(good)  # the fast path now knows this shape
        cases = [
            (good.astype(np.float32), r"expected int8 \[1,3,40\], got float32"),
            (np.zeros((1, 4, 40), np.int8), "dimension 1 is 4, expected 3"),
            (np.zeros((3, 40), np.int8), "rank 2, expected rank 3"),
            ({"audio": good}, "unknown input\\(s\\) 'audio'"),
            ({model.inputs[0].name: good, "extra": good}, "unknown input\\(s\\) 'extra'"),
            ([[["a"] * 40] * 3], "got"),
        ]
        for bad, message in cases:
            with pytest.raises(InputError, match=message) as info:
                model.predict(bad)
            assert "\n" not in str(info.value)
        with pytest.raises(InputError, match="unknown output"):
            model.predict(good, outputs=["probability"])
        # A Python list of ints converts as before, and the general path still runs.
        (value,) = model.predict(good.tolist()).values()
        assert value.shape == (1, 1)
        out_name = model.outputs[0].name
        assert set(model.predict(good, outputs=[out_name])) == {out_name}


def test_dynamic_model_fast_path_resizes_for_each_length_from_many_threads() -> None:
    """melspectrogram ([-1, -1] audio): every length resizes the shared interpreter under its
    lock; four threads mixing lengths get what one thread gets, length by length."""
    rng = np.random.default_rng(4)
    clips = [
        rng.uniform(-3000, 3000, (1, n)).astype(np.float32) for n in (1280, 1600, 1280, 2560) * 6
    ]
    with edgeinfer.load(_mel(), threads=1) as model:
        alone = [next(iter(model.predict(c).values())) for c in clips]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda c: next(iter(model.predict(c).values())), clips))
        # A float64 clip converts (the validator's path) and matches its float32 twin.
        (as64,) = model.predict(clips[1].astype(np.float64)).values()
    assert {a.shape[2] for a in alone} == {5, 7, 13}
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, t)
    np.testing.assert_array_equal(as64, alone[1])


def test_a_closed_model_refuses_to_run() -> None:
    model = edgeinfer.load(MODEL, threads=1)
    x = np.zeros((1, 3, 40), np.int8)
    model.predict(x)
    model.close()
    with pytest.raises(BackendError, match="the model is closed"):
        model.predict(x)
    with pytest.raises(BackendError, match="the model is closed"):
        model.predict(x, outputs=[model.outputs[0].name])


def test_static_float_model_converts_what_the_runtime_would_misread() -> None:
    """Arrays of the exact dtype go to LiteRT unchecked (it checks the shape itself); any
    other float layout -- big-endian, float64, a strided view -- is converted first."""
    oww = pytest.importorskip("wyoming_openwakeword", reason="wyoming-openwakeword (--no-deps)")
    path = Path(oww.__file__).parent / "models" / "ok_nabu_v0.1.tflite"
    x = np.random.default_rng(5).standard_normal((1, 16, 96)).astype(np.float32)
    with edgeinfer.load(path, threads=1) as model:
        (want,) = model.predict(x).values()
        wide = np.zeros((1, 16, 192), np.float32)
        wide[:, :, ::2] = x
        for variant in (x.astype(">f4"), x.astype(np.float64), wide[:, :, ::2], x.tolist()):
            (got,) = model.predict(variant).values()
            np.testing.assert_array_equal(got, want)
        with pytest.raises(InputError, match="dimension 2 is 95, expected 96"):
            model.predict(x[:, :, :95].copy())


def test_shared_interpreter_gives_each_thread_its_own_answer() -> None:
    """Eight threads on one stateless model's shared interpreter, each with its own inputs:
    the lock keeps one call's set/invoke/get from interleaving with another's."""
    oww = pytest.importorskip("wyoming_openwakeword", reason="wyoming-openwakeword (--no-deps)")
    path = Path(oww.__file__).parent / "models" / "ok_nabu_v0.1.tflite"
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1, 16, 96)).astype(np.float32) for _ in range(1000)]
    with edgeinfer.load(path, threads=1) as model:
        alone = [next(iter(model.predict(x).values())) for x in xs]
        assert len({float(a[0, 0]) for a in alone}) > 500  # the answers differ by input
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda x: next(iter(model.predict(x).values())), xs))
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, t)
