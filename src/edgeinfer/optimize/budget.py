"""The accuracy budget: how much worse than the original a candidate may be.

``Budget.parse("0.01")`` is an absolute drop (0.01 of accuracy, i.e. one point, or 0.01 of
mean cosine similarity); ``Budget.parse("1%")`` is relative to the original's value. For
lower-is-better metrics (MSE, MAE, max abs error) the "drop" is the increase.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeinfer.errors import InputError
from edgeinfer.optimize.metrics import Metric

__all__ = ["Budget"]

_EPS = 1e-9  # float noise allowed at the boundary


@dataclass(frozen=True)
class Budget:
    """An allowed metric drop, absolute or relative (fraction of the original's value)."""

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.value >= 0:
            raise InputError(f"max drop must be >= 0, got {self.value}")

    @classmethod
    def parse(cls, text: str | float | Budget) -> Budget:
        """``0.01`` / ``"0.01"`` (absolute) or ``"1%"`` (relative)."""
        if isinstance(text, Budget):
            return text
        raw = str(text).strip()
        relative = raw.endswith("%")
        try:
            value = float(raw[:-1] if relative else raw)
        except ValueError:
            raise InputError(
                f"max drop {text!r} is not a number; give an absolute drop like 0.01 or a "
                "relative one like 1%"
            ) from None
        return cls(value / 100.0 if relative else value, relative)

    def allowed(self, baseline: float) -> float:
        """The largest allowed drop for an original scoring ``baseline``."""
        return self.value * abs(baseline) if self.relative else self.value

    def drop(self, metric: Metric, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (negative: better)."""
        return baseline - value if metric.higher_is_better else value - baseline

    def within(self, metric: Metric, baseline: float, value: float) -> bool:
        return self.drop(metric, baseline, value) <= self.allowed(baseline) + _EPS

    def describe(self) -> str:
        if self.relative:
            return f"{self.value * 100:g}% of the original"
        return f"{self.value:g} absolute"
