from __future__ import annotations

import pytest

from edgeinfer import ProviderError
from edgeinfer.runtime.providers import normalize, resolve_providers

GPU_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_auto_ranks_accelerators_first_and_skips_non_hardware() -> None:
    assert resolve_providers("auto", available=list(reversed(GPU_BOX))) == GPU_BOX
    assert resolve_providers(
        "auto", available=["AzureExecutionProvider", "CPUExecutionProvider"]
    ) == ["CPUExecutionProvider"]
    assert resolve_providers(
        None, available=["CoreMLExecutionProvider", "CPUExecutionProvider"]
    ) == ["CoreMLExecutionProvider", "CPUExecutionProvider"]


def test_explicit_lists_and_aliases() -> None:
    assert normalize("cuda") == "CUDAExecutionProvider"
    assert resolve_providers(["cuda", "cpu"], available=GPU_BOX) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(
        "OpenVINOExecutionProvider", available=["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    ) == ["OpenVINOExecutionProvider"]


def test_missing_provider_is_an_error_unless_fallback(caplog: pytest.LogCaptureFixture) -> None:
    cpu_only = ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match=r"'coreml' not available; this onnxruntime build has"):
        resolve_providers(["coreml"], available=cpu_only)
    assert resolve_providers(["coreml"], available=cpu_only, fallback=True) == cpu_only
    assert "falling back" in caplog.text
    with pytest.raises(ProviderError, match="no execution provider requested"):
        resolve_providers([], available=cpu_only)
