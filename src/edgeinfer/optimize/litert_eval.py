"""Measuring TFLite candidates on LiteRT for the LiteRT search (:mod:`.tflite`).

:class:`Runner` feeds float data by signature names (or tensor names for a bare ``.tflite``),
quantizing it for integer inputs and dequantizing integer outputs, so every candidate is
judged on the same data with the same metrics (:mod:`.metrics`). Latency is what a device
pays per inference: a prepared sample (already in the model's dtypes) through ``invoke``;
:func:`side_by_side` re-times all candidates round-robin so that load from other work on a
shared machine hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.evaluate import Evaluation
from edgeinfer.optimize.metrics import parse_metric, standard_metrics
from edgeinfer.optimize.search import SearchConfig

__all__ = ["PROVIDERS", "Runner", "evaluate_tflite", "side_by_side", "time_ms"]

PROVIDERS = ("LiteRT CPU (XNNPACK)",)


class Runner:
    """One LiteRT interpreter, fed by signature names with float data (quantized on the way
    in for integer inputs, dequantized on the way out)."""

    def __init__(self, path: Path, threads: int | None, signature: bool) -> None:
        from edgeinfer.convert.tflite import open_interpreter

        self.path, self.signature = path, signature
        # Tensors are allocated on the first run, at the data's shapes: a model with dynamic
        # dims (audio of any length) may not even prepare at its declared placeholder sizes.
        self.interp = open_interpreter(path, threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgeinfer.convert.tflite import run_tflite

        return run_tflite(self.path, feeds, signature=self.signature, interpreter=self.interp)

    def timer(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """A no-argument call that runs one prepared sample (inputs already in the model's
        dtypes): what a device pays per inference."""
        from edgeinfer.convert.tflite import to_model_dtype

        if self.signature:
            runner = self.interp.get_signature_runner()
            details = runner.get_input_details()
            args = {k: to_model_dtype(np.asarray(v), details[k]) for k, v in feeds.items()}
            runner(**args)
            return lambda: runner(**args)
        interp = self.interp
        self.run(feeds)  # resized to this sample's shapes and allocated
        ins = {str(d["name"]): d for d in interp.get_input_details()}
        ready = [(ins[k]["index"], to_model_dtype(np.asarray(v), ins[k])) for k, v in feeds.items()]
        outs = [d["index"] for d in interp.get_output_details()]

        def call() -> None:
            for index, value in ready:
                interp.set_tensor(index, value)
            interp.invoke()
            for index in outs:
                interp.get_tensor(index)

        call()
        return call


def time_ms(call: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def evaluate_tflite(
    path: Path,
    data: Dataset,
    config: SearchConfig,
    output: str,
    signature: bool,
    reference: np.ndarray | None,
) -> tuple[Evaluation, np.ndarray, Any]:
    started = time.perf_counter()
    metric = parse_metric(config.metric)
    runner = Runner(path, config.threads, signature)
    parts = []
    batch = config.batch_size if signature else 1  # tensor-name models keep their batch
    for feeds in data.batches(batch):
        parts.append(runner.run(feeds)[output])
    outputs = np.concatenate(parts)
    ref = outputs if reference is None else reference
    metrics = standard_metrics(metric, outputs, labels=data.labels, reference=ref)
    timer = runner.timer(data.sample(0))
    times = time_ms(timer, config.repeats)
    ev = Evaluation(
        metrics=metrics,
        latency_ms=float(np.median(times)),
        latency_p90_ms=float(np.percentile(times, 90)),
        size_bytes=path.stat().st_size,
        providers=PROVIDERS,
        eval_seconds=time.perf_counter() - started,
    )
    return ev, outputs, timer


def side_by_side(timers: list[Any], rounds: int) -> list[float]:
    samples: list[list[float]] = [[] for _ in timers]
    order = list(range(len(timers)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else order[::-1]:  # A B C, then C B A
            samples[i].extend(time_ms(timers[i], 1))
    return [float(np.median(s)) for s in samples]
