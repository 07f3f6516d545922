"""The vectorized KL threshold search gives ONNX Runtime's thresholds, exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.optimize.passes.entropy import entropy_threshold, speed_up


@pytest.fixture(scope="module")
def collector(digits_onnx: Path, digits: tuple, tmp_path_factory: pytest.TempPathFactory) -> object:
    """ONNX Runtime's entropy collector after real calibration data (the digits CNN)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgeinfer.optimize.data import calibration_reader, load_dataset, model_specs
    from edgeinfer.optimize.passes.static_int8 import StaticInt8Config, _op_types

    data = load_dataset({"pixels": digits[0][:64]}, model_specs(digits_onnx))
    calibrator = create_calibrator(
        digits_onnx,
        _op_types(StaticInt8Config()),
        augmented_model_path=os.fspath(tmp_path_factory.mktemp("entropy") / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 512, "num_quantized_bins": 128},
    )
    calibrator.collect_data(calibration_reader(data, 16))
    return calibrator.collector


def test_same_thresholds_as_onnx_runtime_on_real_histograms(collector: object) -> None:
    histograms = list(collector.histogram_dict.values())  # type: ignore[attr-defined]
    assert len(histograms) > 5
    for histogram in histograms:
        want = collector.get_entropy_threshold(histogram, 128)  # type: ignore[attr-defined]
        got = entropy_threshold(histogram, 128)
        assert (got[0], got[1]) == (want[0], want[1])
        assert np.asarray(got[0]).dtype == np.asarray(want[0]).dtype


@pytest.mark.parametrize(("bins", "quantized"), [(512, 128), (300, 128), (129, 64)])
def test_same_thresholds_on_skewed_and_sparse_histograms(
    collector: object, bins: int, quantized: int
) -> None:
    rng = np.random.default_rng(bins)
    for _ in range(5):
        counts = rng.poisson(rng.exponential(20.0, bins)).astype(np.int64)
        counts[rng.random(bins) < 0.3] = 0  # sparse, as activations after ReLU are
        edges = np.linspace(-3.0, 5.0, bins + 1).astype(np.float32)
        histogram = (counts, edges, edges[0] + 0.1, edges[-1] - 0.2)
        want = collector.get_entropy_threshold(histogram, quantized)  # type: ignore[attr-defined]
        assert entropy_threshold(histogram, quantized) == (want[0], want[1])


def test_speed_up_replaces_the_search_of_one_collector(collector: object) -> None:
    class Other:
        pass

    assert not speed_up(Other())  # another ONNX Runtime: its own search stays
    assert not speed_up(None)
    histogram = next(iter(collector.histogram_dict.values()))  # type: ignore[attr-defined]
    assert speed_up(collector)  # last in this module: the collector is not used after it
    assert collector.get_entropy_threshold(histogram, 128) == entropy_threshold(histogram, 128)  # type: ignore[attr-defined]
