"""Which candidates a search tries: the candidate names, the search settings, the recipes.

:func:`plan` turns the wanted candidate names into recipes (or a reason to skip one: no
calibration data, no GPU/NPU provider for FP16, no transformer fusion to leave out);
:func:`sensitive_recipe` builds the ``+exclude-sensitive`` variant of the best measured
dynamic or static INT8 candidate once those have been measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from edgeinfer.errors import InputError
from edgeinfer.optimize.budget import Budget
from edgeinfer.optimize.candidate import Candidate
from edgeinfer.optimize.data import Dataset
from edgeinfer.optimize.metrics import Metric, parse_metric
from edgeinfer.optimize.passes.base import require_choice
from edgeinfer.optimize.passes.compact import CompactConfig
from edgeinfer.optimize.passes.dynamic_int8 import DynamicInt8Config
from edgeinfer.optimize.passes.fp16 import FP16_PROVIDERS, Fp16Config
from edgeinfer.optimize.passes.graph import GraphConfig
from edgeinfer.optimize.passes.sensitivity import SensitivityConfig
from edgeinfer.optimize.passes.static_int8 import METHODS, StaticInt8Config
from edgeinfer.optimize.recipe import Recipe, Step

__all__ = [
    "CANDIDATES",
    "COMPUTE_OPS",
    "CONV_ONLY",
    "DEFAULT_CANDIDATES",
    "SENSITIVE",
    "SENSITIVE_OF",
    "SearchConfig",
    "candidate_names",
    "fp16_provider",
    "plan",
    "sensitive_recipe",
]

_RECOVERABLE = 4.0  # try sparing sensitive nodes only if the drop is within 4x the budget
SENSITIVE = "+exclude-sensitive"
CONV_ONLY = "-conv-only"
# Quantized in a "-conv-only" candidate: the operators that hold the work. Element-wise
# operators (hard-swish's Mul and HardSigmoid, residual Adds, Resize) stay float: on
# PP-OCR's detector that keeps mean cosine 0.991 where quantizing every operator gives 0.968.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CANDIDATES = (
    "graph",
    "dynamic-int8",
    "dynamic-int8-per-channel",
    "dynamic-int8-per-channel-unfused",
    "dynamic-int8-reduce-range",
    *(f"static-int8-{m}" for m in METHODS),
    "static-int8-entropy" + CONV_ONLY,
    "dynamic" + SENSITIVE,
    "static" + SENSITIVE,
    "fp16",
)
DEFAULT_CANDIDATES = tuple(c for c in CANDIDATES if c != "dynamic-int8-reduce-range")
# "<candidate>+exclude-sensitive" starts from that very candidate (the table shows these
# names); "dynamic+exclude-sensitive"/"static+exclude-sensitive" from the best measured one.
SENSITIVE_OF = tuple(
    c + SENSITIVE for c in CANDIDATES if c.startswith(("dynamic-int8", "static-int8"))
)


def candidate_names() -> tuple[str, ...]:
    """Every name ``candidates`` accepts (for ``--help`` and error messages)."""
    return (*CANDIDATES, *SENSITIVE_OF)


Objective = Literal["latency", "size"]


@dataclass(frozen=True)
class SearchConfig:
    """What to optimize for, within which budget, and how to measure."""

    metric: str = "accuracy"  # see edgeinfer.optimize.metrics
    max_drop: str | float = 0.01  # absolute (0.01) or relative ("1%")
    objective: Objective = "latency"
    candidates: tuple[str, ...] | None = None  # None: DEFAULT_CANDIDATES
    output: str | None = None  # which model output the metric reads (default: the first)
    threads: int | None = None  # intra-op threads while timing (None: runtime default)
    repeats: int = 20  # timed single-sample calls per candidate (then re-timed side by side)
    final_rounds: int = 40  # round-robin calls per candidate in the side-by-side timing
    batch_size: int = 32  # samples per call while computing metrics
    calibration_samples: int = 128  # at most, for static INT8
    sensitivity_exclude: int = 3  # nodes kept in float by the "+exclude-sensitive" candidates
    sensitivity_samples: int = 16  # samples whose activations are compared
    memory: bool = True  # peak memory of the original and the chosen model (a subprocess each)
    screen_samples: int = 32  # first measure on this many samples; drop clear failures early
    compact: bool = True  # end every recipe with the compaction pass (short names)
    size_margin: float = 0.10  # objective size: within 10% of the smallest, the fastest wins
    latency_margin: float = 0.03  # objective latency: within 3% of the fastest, the smallest wins
    min_speedup: float = 0.05  # objective latency: a candidate must beat the original by 5%
    graph: GraphConfig = field(default_factory=GraphConfig)

    def __post_init__(self) -> None:
        parse_metric(self.metric)
        Budget.parse(self.max_drop)
        require_choice("objective", self.objective, ("latency", "size"))
        if self.candidates is not None:
            object.__setattr__(self, "candidates", tuple(self.candidates))
            unknown = [c for c in self.candidates if c not in candidate_names()]
            if unknown:
                raise InputError(
                    f"unknown candidate(s) {', '.join(map(repr, unknown))}; expected some of "
                    f"{', '.join(candidate_names())}"
                )
        if self.repeats < 1 or self.batch_size < 1 or self.final_rounds < 0:
            raise InputError("repeats and batch_size must be >= 1, final_rounds >= 0")
        for what, margin in (
            ("size_margin", self.size_margin),
            ("latency_margin", self.latency_margin),
            ("min_speedup", self.min_speedup),
        ):
            if not 0.0 <= margin < 1.0:
                raise InputError(f"{what} must be a fraction in [0, 1), e.g. 0.1; got {margin}")


def fp16_provider() -> str | None:
    from edgeinfer.runtime.providers import available_providers

    have = available_providers()
    return next((p for p in FP16_PROVIDERS if p in have), None)


def plan(config: SearchConfig, calibration: Dataset | None, transformer: bool) -> list[Candidate]:
    wanted: list[str] = []
    for name in config.candidates or DEFAULT_CANDIDATES:
        base = name.removesuffix(SENSITIVE)
        if name in SENSITIVE_OF and base not in wanted:
            wanted.append(base)  # the variant needs its starting point measured first
        if name not in wanted:
            wanted.append(name)
    graph = Step("graph", config.graph)
    unfused = Step("graph", replace(config.graph, transformer="off"))
    tail = (Step("compact", CompactConfig()),) if config.compact else ()
    plan: list[Candidate] = []
    for name in wanted:
        recipe: Recipe | None = None
        reason = ""
        if name.endswith(SENSITIVE):  # built by sensitive_recipe once its base is measured
            if name.startswith("static") and calibration is None:
                reason = "no calibration data (give --calibration)"
        elif name == "graph":
            recipe = Recipe(name, (graph, *tail), "graph optimization only")
        elif name == "dynamic-int8-per-channel-unfused":
            if not transformer or config.graph.transformer == "off":
                reason = "no transformer fusion to leave out"
            else:
                cfg = DynamicInt8Config(per_channel=True)
                desc = "dynamic INT8, per-channel, without transformer fusions"
                recipe = Recipe(name, (unfused, Step("dynamic_int8", cfg), *tail), desc)
        elif name.startswith("dynamic-int8"):
            per_channel, reduce = name.endswith("per-channel"), name.endswith("reduce-range")
            cfg = DynamicInt8Config(per_channel=per_channel, reduce_range=reduce)
            desc = (
                "dynamic INT8, "
                + ("per-channel" if per_channel else "per-tensor")
                + (" 7-bit weights" if reduce else "")
            )
            recipe = Recipe(name, (graph, Step("dynamic_int8", cfg), *tail), desc)
        elif name.startswith("static-int8-"):
            conv_only = name.endswith(CONV_ONLY)
            method = name.removeprefix("static-int8-").removesuffix(CONV_ONLY)
            if calibration is None:
                reason = "no calibration data (give --calibration)"
            else:
                cfg_s = StaticInt8Config(
                    calibration=calibration,
                    method=method,  # type: ignore[arg-type]  # one of METHODS, by construction
                    max_samples=config.calibration_samples,
                    op_types=COMPUTE_OPS if conv_only else None,
                )
                desc = f"static INT8 QDQ, {method}" + (
                    ", only Conv/ConvTranspose/MatMul/Gemm" if conv_only else ""
                )
                recipe = Recipe(name, (graph, Step("static_int8", cfg_s), *tail), desc)
        elif name == "fp16":
            provider = fp16_provider()
            if provider is None:
                reason = (
                    "no GPU/NPU execution provider here; ONNX Runtime's CPU provider runs "
                    "FP16 by casting back to FP32, so it would only be slower"
                )
            else:
                recipe = Recipe(
                    name, (graph, Step("fp16", Fp16Config()), *tail), f"FP16 on {provider}"
                )
        plan.append(
            Candidate(name, recipe, status="skipped" if reason else "pending", reason=reason)
        )
    return plan


def sensitive_recipe(
    name: str,
    done: list[Candidate],
    metric: Metric,
    budget: Budget,
    base_value: float,
    data: Dataset,
    config: SearchConfig,
) -> tuple[Recipe | None, str]:
    """The ``+exclude-sensitive`` variant of the best measured dynamic/static candidate."""
    family = name.split("+", 1)[0]
    exact = family in CANDIDATES  # e.g. "static-int8-minmax+exclude-sensitive"
    pool = [
        c
        for c in done
        if c.status == "ok"
        and c.recipe is not None
        and (c.name == family if exact else c.name.startswith(f"{family}-int8"))
        and c.drop is not None
    ]
    family = family.split("-", 1)[0]
    if not pool:
        return None, f"no measured {family} INT8 candidate to start from"
    if all(c.reason for c in pool):
        return None, (
            f"every {family} INT8 candidate was screened out far outside the budget; keeping "
            f"{config.sensitivity_exclude} nodes in float does not recover that much"
        )
    pool = [c for c in pool if not c.reason]
    best = min(pool, key=lambda c: c.drop if c.drop is not None else float("inf"))
    assert best.recipe is not None and best.drop is not None
    allowed = budget.allowed(base_value)
    if best.drop > _RECOVERABLE * max(allowed, 1e-12):
        return None, (
            f"the best {family} INT8 candidate ({best.name}) is far outside the budget "
            f"({metric.name} drop {best.drop:.4g} vs {allowed:.4g} allowed); keeping "
            f"{config.sensitivity_exclude} nodes in float does not recover that much"
        )
    steps = list(best.recipe.steps)
    at = next(i for i, s in enumerate(steps) if s.pass_name in ("dynamic_int8", "static_int8"))
    sens = SensitivityConfig(
        quantization=steps[at].config,
        data=data,
        exclude=config.sensitivity_exclude,
        max_samples=config.sensitivity_samples,
    )
    steps[at] = Step("sensitivity", sens)
    desc = f"{best.recipe.description}, {config.sensitivity_exclude} most sensitive nodes in float"
    return Recipe(f"{best.name}{SENSITIVE}", tuple(steps), desc), ""
