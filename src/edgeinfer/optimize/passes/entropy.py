"""The KL-divergence threshold search of entropy calibration, without its Python loops.

ONNX Runtime's ``HistogramCollector.get_entropy_threshold`` tries every symmetric clipping
range of a tensor's histogram and keeps the one whose quantized distribution is closest
(KL divergence) to the original. Inside each try it merges and expands the bins with
Python's built-in ``sum`` over numpy slices, a few hundred calls per try: with 512 bins
that is most of the time of entropy calibration (22 of 23 s for PP-OCR's small
classifier on four images). :func:`entropy_threshold` does the same arithmetic with numpy
reductions, including the integer truncations of the original, so it returns the same
thresholds (a test checks them against ONNX Runtime's on real histograms);
:func:`speed_up` installs it on a collector.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

__all__ = ["entropy_threshold", "speed_up"]


def entropy_threshold(histogram: Any, num_quantized_bins: int) -> tuple[Any, Any]:
    """``(low, high)`` clipping range of ``histogram`` = (counts, edges, min, max)."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, hist_edges = histogram[0], histogram[1]
    num_bins = hist.size
    zero_bin_index = num_bins // 2
    half = num_quantized_bins // 2
    dtype = hist_edges.dtype
    tries = range(half, zero_bin_index + 1)
    kl = np.zeros(len(tries))
    thresholds = []
    # prefix sums for the outliers left and right of each range
    cumsum = np.concatenate([[0], np.cumsum(hist)]).astype(hist.dtype)
    total = cumsum[-1]
    for n, i in enumerate(tries):
        start_index = zero_bin_index - i
        end_index = min(zero_bin_index + i + 1, num_bins)
        thresholds.append((hist_edges[start_index], hist_edges[end_index]))
        sliced = hist[start_index:end_index]
        p = sliced.copy()
        p[0] += cumsum[start_index]
        p[-1] += total - cumsum[end_index]
        nonzeros = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        whole = num_quantized_bins * merged
        quantized = np.zeros(num_quantized_bins, dtype=np.int64)
        quantized[:] = sliced[:whole].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[whole:].sum()
        norms = nonzeros[:whole].reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)
        safe = np.where(norms != 0, norms, 1)
        per_bin = np.where(norms != 0, quantized / safe, 0.0)
        q[:whole] = np.repeat(per_bin, merged)  # int64 truncates, as the original does
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        kl[n] = np.inf if ps is None or qs is None else np.array(entropy(ps, qs), dtype=dtype)
    low, high = thresholds[int(np.argmin(kl))]
    low = histogram[2] if low < histogram[2] else low
    high = histogram[3] if high > histogram[3] else high
    return low, high


def speed_up(collector: Any) -> bool:
    """Use :func:`entropy_threshold` in an ONNX Runtime histogram collector; False if the
    collector has no such method (another ONNX Runtime version: its own search runs)."""
    if not callable(getattr(collector, "get_entropy_threshold", None)):
        return False

    def fast(self: Any, histogram: Any, num_quantized_bins: int) -> tuple[Any, Any]:
        return entropy_threshold(histogram, num_quantized_bins)

    collector.get_entropy_threshold = types.MethodType(fast, collector)
    return True
