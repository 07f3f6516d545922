"""The on-device health gate a new bundle must pass before it is committed.

Three checks, in order, each with the reason it failed:

1. the bundle loads (hashes verified by ``Bundle.open``, ONNX Runtime / LiteRT session made);
2. its golden sample reproduces within the bundle's tolerance (``Bundle.check_golden``);
3. its latency stays within a budget relative to the version it replaces: the median of
   ``latency_runs`` calls on the golden inputs may be at most ``latency_factor`` times the
   previous version's median plus ``latency_slack_ms`` (old and new are timed interleaved,
   so a busy device slows both alike).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.deliver._fsutil import crash_point

__all__ = ["GateConfig", "GateResult", "run_gate"]


@dataclass(frozen=True)
class GateConfig:
    golden: bool = True  # reproduce the golden sample
    require_golden: bool = False  # refuse bundles that carry no golden sample
    latency: bool = True  # compare latency with the previous version
    latency_factor: float = 2.0  # new median may be this many times the old one ...
    latency_slack_ms: float = 5.0  # ... plus this many milliseconds
    latency_runs: int = 15  # timed calls per model
    providers: str = "cpu"  # execution providers for the check ("auto" for the best)
    threads: int | None = 1  # intra-op threads for the check


@dataclass(frozen=True)
class GateResult:
    ok: bool
    reason: str | None = None
    new_ms: float | None = None  # median latency of the new version, milliseconds
    old_ms: float | None = None  # median latency of the previous version, milliseconds
    samples_ms: tuple[float, ...] = ()  # the new version's timed calls, milliseconds

    def figures(self) -> dict[str, float | bool | str | None]:
        """What a fleet report carries of this gate (the samples go as a sketch)."""
        return {
            "ok": self.ok,
            "reason": None if self.reason is None else self.reason[:500],
            "new_ms": self.new_ms,
            "old_ms": self.old_ms,
        }


def _load(path: Path, cfg: GateConfig) -> Any:
    from edgeinfer.runtime.model import load

    return load(path, providers=cfg.providers, threads=cfg.threads)


def _timed_ms(models: list[Any], feeds: list[dict[str, Any]], runs: int) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in models]
    for m, f in zip(models, feeds, strict=True):
        m.predict(f)  # warm-up
    for _ in range(runs):
        for i, (m, f) in enumerate(zip(models, feeds, strict=True)):
            start = time.perf_counter()
            m.predict(f)
            times[i].append((time.perf_counter() - start) * 1e3)
    return times


def run_gate(new: Path, previous: Path | None, config: GateConfig | None = None) -> GateResult:
    """Check the bundle directory ``new`` (against ``previous``, if any)."""
    from edgeinfer.bundle import Bundle
    from edgeinfer.errors import EdgeInferError

    cfg = config or GateConfig()
    try:
        bundle = Bundle.open(new)
        model = _load(bundle.path, cfg)
    except EdgeInferError as exc:
        return GateResult(False, f"bundle does not load: {exc}")
    crash_point("gate")
    old_model = None
    try:
        golden = bundle.golden()
        if golden is None and cfg.require_golden:
            return GateResult(False, "bundle has no golden sample and one is required")
        if cfg.golden and golden is not None:
            try:
                problems = bundle.check_golden(model)
            except EdgeInferError as exc:
                return GateResult(False, f"golden sample does not run: {exc}")
            if problems:
                return GateResult(False, "golden sample mismatch: " + "; ".join(problems))
        if not cfg.latency or previous is None:
            return GateResult(True)
        feeds = golden.inputs if golden is not None else model.sample_inputs()
        try:
            old_model = _load(previous, cfg)
            old_golden = Bundle.open(previous).golden()
            old_feeds = old_golden.inputs if old_golden is not None else old_model.sample_inputs()
            old_model.predict(old_feeds)
        except EdgeInferError:
            # the previous bundle cannot be run (gone or broken): nothing to compare with
            return GateResult(True)
        try:
            new_t, old_t = _timed_ms([model, old_model], [feeds, old_feeds], cfg.latency_runs)
        except EdgeInferError as exc:
            return GateResult(False, f"model fails when run repeatedly: {exc}")
        new_ms, old_ms, samples = statistics.median(new_t), statistics.median(old_t), tuple(new_t)
        budget = cfg.latency_factor * old_ms + cfg.latency_slack_ms
        if new_ms > budget:
            return GateResult(
                False,
                f"latency {new_ms:.2f} ms exceeds the budget of {budget:.2f} ms "
                f"({cfg.latency_factor:g} x {old_ms:.2f} ms of the previous version "
                f"+ {cfg.latency_slack_ms:g} ms)",
                new_ms,
                old_ms,
                samples,
            )
        return GateResult(True, None, new_ms, old_ms, samples)
    finally:
        model.close()
        if old_model is not None:
            old_model.close()
