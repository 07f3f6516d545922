"""Staged rollouts that stop themselves: the rules, as pure functions of store rows.

A rollout takes one model version through stages (percents of the model's devices, e.g.
5, 25, 100). A device is in a stage when its rollout bucket (the one TUF rollouts use:
:func:`~edgeinfer.deliver.targets.rollout_bucket` of the agent's device id and the model)
is below the stage's share. The fleet learns from the devices' signed reports which of
them run the version (``ok``) and which rolled it back or failed its health gate
(``failed``), and the rules here decide, like hawkBit's rollout groups:

* **halt** when at least ``min_devices`` report on the version and the failure share is
  above ``max_failure``, or the p95 latency of the version's merged KLL sketches is more
  than ``max_latency_regression`` above the previous version's on some hardware class;
* **promote** (or, at the last stage, **complete**) when the stage has soaked for
  ``soak_s`` and enough of it succeeded: ``ok >= (1 - max_failure)`` of the stage's
  devices, and at least ``min(min_devices, devices in the stage)`` reported;
* **hold** otherwise.

Like python-tuf's ``TrustedMetadataSet``, :func:`decide` does no I/O: figures in, decision
out; :mod:`edgeinfer.fleet.rollout_service` gathers the figures and applies the decision
under a row lock. :func:`summary` and :func:`summaries` are the read side the API, the
CLI and the dashboard render.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeinfer.fleet.errors import BadReport
from edgeinfer.fleet.store import Device, Rollout, RolloutDevice, RolloutEvent

__all__ = [
    "ACTIVE",
    "Decision",
    "Plan",
    "StageFigures",
    "as_utc",
    "check_plan",
    "decide",
    "latency_regression",
    "summaries",
    "summary",
]

ACTIVE = ("running", "paused")  # states a rollout can still change from
STATES = ("running", "paused", "halted", "aborted", "done")


@dataclass(frozen=True)
class Plan:
    stages: tuple[float, ...]  # percents of the model's devices, increasing, the last 100
    max_failure: float  # failure share (0..1) above which the rollout halts
    min_devices: int  # devices reporting on the version before a halt can trip
    max_latency_regression: float | None = None  # p95 ratio - 1 (0.2 = 20 % slower)
    soak_s: float = 0.0  # seconds each stage lasts at least


@dataclass(frozen=True)
class StageFigures:
    """What the fleet knows of the current stage when it decides."""

    in_stage: int  # the model's devices whose bucket the stage's share reaches
    ok: int  # devices that report running the version
    failed: int  # devices that rolled it back or failed its health gate
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> figures

    @property
    def reporting(self) -> int:
        return self.ok + self.failed

    @property
    def failure_share(self) -> float:
        return self.failed / self.reporting if self.reporting else 0.0


@dataclass(frozen=True)
class Decision:
    action: Literal["hold", "promote", "complete", "halt"]
    rule: str | None = None  # the halt rule that tripped: failure-share, latency-p95
    detail: dict[str, Any] = field(default_factory=dict)  # the figures behind it


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def check_plan(plan: Plan) -> Plan:
    """``plan`` if it makes sense, else a one-line :class:`BadReport` saying what to change."""
    stages = plan.stages
    if not stages or len(stages) > 20:
        raise BadReport("stages: expected 1 to 20 percents, e.g. 5,25,100")
    if any(not 0 < s <= 100 for s in stages) or list(stages) != sorted(set(stages)):
        raise BadReport(
            f"stages {','.join(f'{s:g}' for s in stages)}: expected increasing percents "
            "in (0, 100], e.g. 5,25,100"
        )
    if stages[-1] != 100:
        raise BadReport(f"stages: the last stage must be 100 (got {stages[-1]:g})")
    if not 0 <= plan.max_failure < 1:
        raise BadReport(f"max_failure {plan.max_failure:g}: expected a share in [0, 1)")
    if not 1 <= plan.min_devices <= 10**9:
        raise BadReport(f"min_devices {plan.min_devices}: expected at least 1")
    if plan.max_latency_regression is not None and not 0 <= plan.max_latency_regression <= 100:
        raise BadReport(
            f"max_latency_regression {plan.max_latency_regression:g}: expected a share >= 0"
        )
    if not 0 <= plan.soak_s <= 365 * 86400:
        raise BadReport(f"soak_s {plan.soak_s:g}: expected 0 to a year of seconds")
    return plan


def latency_regression(
    new: dict[str, float], previous: dict[str, float]
) -> dict[str, float] | None:
    """``{"p95", "previous_p95", "regression"}`` of one hardware class, or ``None`` when
    either side has no p95 to compare."""
    p95, before = new.get("p95"), previous.get("p95")
    if p95 is None or before is None or before <= 0:
        return None
    return {"p95": p95, "previous_p95": before, "regression": p95 / before - 1.0}


def decide(rollout: Rollout, figures: StageFigures, now: dt.datetime) -> Decision:
    """What ``rollout`` should do now, from ``figures`` (no I/O, no side effect)."""
    if rollout.state != "running":
        return Decision("hold", detail={"state": rollout.state})
    base: dict[str, Any] = {
        "stage": rollout.stage,
        "share": rollout.stages[rollout.stage],
        "in_stage": figures.in_stage,
        "reporting": figures.reporting,
        "ok": figures.ok,
        "failed": figures.failed,
        "failure_share": round(figures.failure_share, 4),
    }
    if figures.reporting >= rollout.min_devices:
        if figures.failure_share > rollout.max_failure:
            return Decision(
                "halt",
                "failure-share",
                {**base, "threshold": rollout.max_failure, "min_devices": rollout.min_devices},
            )
        if rollout.max_latency_regression is not None:
            worst = max(
                figures.latency.items(),
                key=lambda item: item[1]["regression"],
                default=None,
            )
            if worst is not None and worst[1]["regression"] > rollout.max_latency_regression:
                hardware_class, figs = worst
                return Decision(
                    "halt",
                    "latency-p95",
                    {
                        **base,
                        "hardware_class": hardware_class,
                        **{k: round(v, 4) for k, v in figs.items()},
                        "threshold": rollout.max_latency_regression,
                        "previous_version": rollout.previous_version,
                    },
                )
    soaked = (now - as_utc(rollout.stage_started_at)).total_seconds()
    needed_ok = math.ceil(figures.in_stage * (1 - rollout.max_failure) - 1e-9)
    needed_reports = min(rollout.min_devices, figures.in_stage)
    if (
        soaked >= rollout.soak_s
        and figures.ok >= needed_ok
        and figures.reporting >= needed_reports
        and figures.failure_share <= rollout.max_failure
    ):
        last = rollout.stage == len(rollout.stages) - 1
        return Decision("complete" if last else "promote", detail={**base, "soaked_s": soaked})
    return Decision("hold", detail={**base, "soaked_s": soaked, "needed_ok": needed_ok})


# the read side --------------------------------------------------------------------------
def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return as_utc(value).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(session: Session, r: Rollout, events: int) -> dict[str, Any]:
    counts = dict(
        session.execute(
            select(RolloutDevice.outcome, func.count())
            .join(Device, Device.id == RolloutDevice.device_id)
            .where(RolloutDevice.rollout_id == r.id, Device.revoked_at.is_(None))
            .group_by(RolloutDevice.outcome)
        ).all()
    )
    history = session.scalars(
        select(RolloutEvent)
        .where(RolloutEvent.rollout_id == r.id)
        .order_by(RolloutEvent.revision.desc())
        .limit(events)
    ).all()
    return {
        "id": r.id,
        "model": r.model,
        "version": r.version,
        "previous_version": r.previous_version,
        "target": (
            {"sha256": r.target_sha256, "length": r.target_length} if r.target_sha256 else None
        ),
        "state": r.state,
        "stages": list(r.stages),
        "stage": r.stage,
        "share": r.stages[r.stage] if r.state not in ("halted", "aborted") else 0,
        "max_failure": r.max_failure,
        "min_devices": r.min_devices,
        "max_latency_regression": r.max_latency_regression,
        "soak_s": r.soak_s,
        "ok": int(counts.get("ok", 0)),
        "failed": int(counts.get("failed", 0)),
        "halt_rule": r.halt_rule,
        "halt_detail": r.halt_detail,
        "revision": r.revision,
        "created_at": _iso(r.created_at),
        "stage_started_at": _iso(r.stage_started_at),
        "updated_at": _iso(r.updated_at),
        "events": [
            {"at": _iso(e.at), "kind": e.kind, "stage": e.stage, "detail": e.detail}
            for e in reversed(history)
        ],
    }


def summary(session: Session, model: str, events: int = 50) -> dict[str, Any] | None:
    """The newest rollout of ``model`` as a JSON-ready dict (``None``: never rolled out).

    Keys: id, model, version, previous_version, target, state, stages, stage, share (the
    share devices are let through now: 0 once halted or aborted), the plan's thresholds,
    ok and failed device counts (revoked devices no longer count), halt_rule and
    halt_detail (the rule that tripped and its figures), revision, times, and the last
    ``events`` events, oldest first.
    """
    r = session.scalars(
        select(Rollout).where(Rollout.model == model).order_by(Rollout.id.desc()).limit(1)
    ).first()
    return None if r is None else _row(session, r, events)


def summaries(session: Session, models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The newest rollout of every model (or of ``models``), by model name, 5 events each."""
    newest = select(Rollout.model, func.max(Rollout.id).label("id")).group_by(Rollout.model)
    if models is not None:
        newest = newest.where(Rollout.model.in_(list(models)))
    ids = [row.id for row in session.execute(newest)]
    rows = session.scalars(select(Rollout).where(Rollout.id.in_(ids)).order_by(Rollout.model))
    return [_row(session, r, 5) for r in rows]
