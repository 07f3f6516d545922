"""What a search measured: one :class:`Candidate` per recipe, and the :class:`SearchResult`.

Both serialize to the JSON of ``report.json`` (``to_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.evaluate import Evaluation
from edgeinfer.optimize.metrics import Metric
from edgeinfer.optimize.recipe import Recipe

__all__ = ["Candidate", "SearchResult"]


@dataclass
class Candidate:
    """One measured (or skipped, or failed) candidate."""

    name: str
    recipe: Recipe | None = None  # None: the original model
    status: str = "pending"  # pending | ok | failed | skipped
    reason: str = ""  # why it was skipped, failed or screened out (it cannot be chosen)
    note: str = ""  # what a pass had to do differently (it can still be chosen)
    path: Path | None = None
    evaluation: Evaluation | None = None
    within_budget: bool = False
    drop: float | None = None
    build_seconds: float = 0.0
    infos: tuple[dict[str, Any], ...] = ()
    side_by_side_ms: float | None = None  # latency from the final round-robin timing

    @property
    def remark(self) -> str:
        """The reason and the note, for the table's note column."""
        return "; ".join(r for r in (self.reason, self.note) if r)

    @property
    def latency_ms(self) -> float:
        if self.side_by_side_ms is not None:
            return self.side_by_side_ms
        return self.evaluation.latency_ms if self.evaluation else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "note": self.note,
            "recipe": None if self.recipe is None else self.recipe.to_dict(),
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            "latency_ms": None if self.evaluation is None else round(self.latency_ms, 4),
            "side_by_side_ms": self.side_by_side_ms,
            "within_budget": self.within_budget,
            "drop": self.drop,
            "build_seconds": round(self.build_seconds, 3),
            "pass_info": list(self.infos),
        }


@dataclass
class SearchResult:
    """Every candidate, the one chosen, and why."""

    metric: Metric
    budget: Budget
    objective: str
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate
    message: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def kept_original(self) -> bool:
        return self.chosen is self.baseline

    def to_dict(self) -> dict[str, Any]:
        base = self.baseline.evaluation
        return {
            "metric": self.metric.name,
            "higher_is_better": self.metric.higher_is_better,
            "max_drop": {"value": self.budget.value, "relative": self.budget.relative},
            "objective": self.objective,
            "baseline_metric": None if base is None else base.metrics[self.metric.name],
            "chosen": self.chosen.name,
            "kept_original": self.kept_original,
            "message": self.message,
            "seconds": round(self.seconds, 2),
            "notes": list(self.notes),
            "candidates": [c.to_dict() for c in [self.baseline, *self.candidates]],
        }
