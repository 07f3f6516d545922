"""The runtime on third-party models' quirks: Silero VAD's integer sample-rate scalar and
its nested-subgraph failures, LiteRT asked for an accelerator, and the benchmark's limits."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer import BackendError, InputError, ProviderError
from edgeinfer.bundle import Bundle
from edgeinfer.runtime import bench as bench_module
from edgeinfer.runtime.backends import backend_for
from edgeinfer.runtime.bench import MIN_CALLS, bench
from edgeinfer.runtime.providers import resolve_providers


@pytest.fixture(scope="module")
def silero() -> Path:
    """Silero VAD v5 (silero-vad's data): input [?, ?], state [2, ?, 128], sr int64 []."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("silero-vad is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        pytest.skip(f"{path}: missing")
    return path


def _vad_inputs(sr: int) -> dict[str, np.ndarray]:
    t = np.arange(512, dtype=np.float32) / 16000
    return {
        "input": (0.3 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(sr, np.int64),
    }


def test_an_integer_scalar_input_is_never_guessed(silero: Path) -> None:
    with pytest.raises(InputError) as info:
        bench(silero, dims={"input.1": 512, "state.1": 1}, min_seconds=0.01)
    message = str(info.value)
    assert "input 'sr' is an integer scalar whose valid values cannot be guessed" in message
    assert "--input FILE" in message and "\n" not in message


def test_the_golden_sample_gives_an_integer_scalar_its_value(silero: Path, tmp_path: Path) -> None:
    out = tmp_path / "vad"
    Bundle.create(silero, out, name="vad", golden_inputs=_vad_inputs(16000))
    result = bench(out, dims={"input.1": 512, "state.1": 1}, warmup=1, min_seconds=0.01)
    assert [s.describe() for s in result.inputs] == [
        "float32 [1,512]",
        "float32 [2,1,128]",
        "int64 []",
    ]
    assert result.calls >= MIN_CALLS


def test_a_failure_inside_a_subgraph_is_one_quiet_line(
    silero: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with edgeinfer.load(silero) as model:
        assert model.predict(_vad_inputs(16000))["output"].shape == (1, 1)
        with pytest.raises(BackendError) as info:
            model.predict(_vad_inputs(5))  # a sample rate the model has no branch for
    message = str(info.value)
    # the innermost node and what it said, not three wrappers each repeating it
    assert "LSTM node" in message and "Input X must have 3 dimensions" in message
    assert "Non-zero status code" not in message and "[ONNXRuntimeError]" not in message
    assert "\n" not in message and len(message) < 400
    with edgeinfer.load(silero) as model:
        feeds = {**_vad_inputs(16000), "state": np.zeros((1, 1, 128), np.float32)}
        with pytest.raises(BackendError) as info:
            model.backend.run(feeds, ["output"])  # past the validator: ONNX Runtime's check
    message = str(info.value)
    assert "input: state" in message and "index: 0 Got: 1 Expected: 2" in message
    assert "\n" not in message and "Please fix" not in message
    captured = capfd.readouterr()  # ONNX Runtime's own coloured log lines are off
    assert "onnxruntime" not in captured.err and "\x1b[" not in captured.err


def test_bench_respects_a_short_time_and_reports_slow_calls(
    mlp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    result = bench(mlp_path, warmup=2, min_seconds=0.0, progress=lines.append)
    assert result.calls == MIN_CALLS  # no hidden minimum of dozens of calls
    assert lines == []  # fast calls say nothing
    # every call counts as slow when the threshold is zero: each is reported as it ends
    monkeypatch.setattr(bench_module, "SLOW_CALL_S", 0.0)
    result = bench(mlp_path, warmup=2, min_seconds=0.0, progress=lines.append)
    assert lines[0].startswith("first inference took ")
    assert lines[1].startswith("warm-up call 1/2 took ")
    timed = [line for line in lines if line.startswith("timed call")]
    assert len(timed) == result.calls
    assert timed[-1].startswith(f"timed call {MIN_CALLS} (at least {MIN_CALLS}) took ")


def test_provider_errors_name_the_python_and_the_cli_spelling() -> None:
    with pytest.raises(ProviderError) as info:
        resolve_providers(["cuda"], available=["CPUExecutionProvider"])
    assert "fallback=True" in str(info.value) and "--fallback" in str(info.value)
    assert resolve_providers(["cuda"], fallback=True, available=["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_litert_refuses_an_accelerator_unless_fallback() -> None:
    wakeword = pytest.importorskip("pymicro_wakeword", reason="needs the 'models' extra")
    pytest.importorskip("ai_edge_litert", reason="needs the 'litert' extra")
    model = Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"
    with pytest.raises(ProviderError) as info:
        backend_for(model, providers=["cuda"])
    message = str(info.value)
    assert "'cuda'" in message and "XNNPACK" in message and "--fallback" in message
    for providers in ("auto", ["cpu"], None):
        backend_for(model, providers=providers).close()
    backend = backend_for(model, providers=["cuda"], fallback=True)
    assert backend.providers == ("LiteRT CPU (XNNPACK)",)
    backend.close()


def test_bundle_directories_get_the_mode_mkdir_gives(mlp_path: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = Bundle.create(mlp_path, tmp_path / "b", name="mlp").path
        again = Bundle.create(mlp_path, out, name="mlp", overwrite=True).path
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE(again.stat().st_mode) == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left over
