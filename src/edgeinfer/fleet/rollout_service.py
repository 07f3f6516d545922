"""Rollouts against the store: start, pause, resume, abort, evaluate, and the document.

Every change happens in one transaction that first locks the rollout's row (``SELECT ...
FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` takes its one write lock), reads
the figures, asks :func:`edgeinfer.fleet.rollouts.decide`, and writes the new state with
an event numbered by the rollout's next revision. Two replicas deciding the same stage
therefore decide one after the other, and the second finds it already promoted; the
events' unique (rollout, revision) would refuse a second record even without the lock.

Decisions run when a report arrives (:func:`record_report`) and on the service's timer
(:func:`evaluate_all`), so a stage whose soak time ends with no report still moves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from edgeinfer._rollout import rollout_bucket
from edgeinfer.fleet import rollout_docs
from edgeinfer.fleet.errors import BadReport, Conflict, NotFound
from edgeinfer.fleet.rollouts import (
    ACTIVE,
    Decision,
    Plan,
    StageFigures,
    check_plan,
    decide,
    latency_regression,
    summary,
)
from edgeinfer.fleet.sketches import quantiles
from edgeinfer.fleet.store import (
    Device,
    Report,
    Rollout,
    RolloutDevice,
    RolloutEvent,
    SketchRow,
    Store,
    utc_now,
)

__all__ = [
    "abort",
    "document",
    "evaluate",
    "evaluate_all",
    "pause",
    "record_report",
    "resume",
    "start",
]

log = logging.getLogger(__name__)
LATENCY = "latency_ms"
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")  # as reports name models


def _newest(session: Session, model: str, lock: bool = True) -> Rollout | None:
    query = select(Rollout).where(Rollout.model == model).order_by(Rollout.id.desc()).limit(1)
    return session.scalars(query.with_for_update() if lock else query).first()


def _event(
    session: Session, r: Rollout, kind: str, detail: dict[str, Any], now: dt.datetime
) -> None:
    r.revision += 1
    r.updated_at = now
    session.add(
        RolloutEvent(
            rollout_id=r.id, revision=r.revision, at=now, kind=kind, stage=r.stage, detail=detail
        )
    )


def _previous_version(session: Session, model: str, version: int) -> int | None:
    """The newest version below ``version`` with latency sketches: the latency baseline."""
    return session.scalar(
        select(SketchRow.version)
        .where(SketchRow.model == model, SketchRow.version < version, SketchRow.metric == LATENCY)
        .order_by(SketchRow.version.desc())
        .limit(1)
    )


def start(
    store: Store,
    model: str,
    version: int,
    plan: Plan,
    target: dict[str, Any] | None = None,
    previous_version: int | None = None,
) -> dict[str, Any]:
    """Start rolling ``version`` of ``model`` out by ``plan``; 409 while another is active."""
    check_plan(plan)
    if target is not None:
        target = rollout_docs.Target.model_validate(target).model_dump()
    now = utc_now()
    with store.session() as session:
        if session.get_bind().dialect.name == "postgresql":
            # two operators starting one model at once: the second finds the first's
            key = int.from_bytes(hashlib.sha256(f"rollout:{model}".encode()).digest()[:8], "big")
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key - 2**63})
        current = _newest(session, model)
        if current is not None and current.state in ACTIVE:
            raise Conflict(
                f"rollout of {model} {current.version} is {current.state}: abort it first"
            )
        r = Rollout(
            model=model,
            version=version,
            target_sha256=target["sha256"] if target else None,
            target_length=target["length"] if target else None,
            previous_version=(
                previous_version
                if previous_version is not None
                else _previous_version(session, model, version)
            ),
            stages=list(plan.stages),
            stage=0,
            state="running",
            max_failure=plan.max_failure,
            min_devices=plan.min_devices,
            max_latency_regression=plan.max_latency_regression,
            soak_s=plan.soak_s,
            created_at=now,
            stage_started_at=now,
            updated_at=now,
            revision=0,
        )
        session.add(r)
        session.flush()
        _event(session, r, "started", {"stages": list(plan.stages)}, now)
        _evaluate_locked(session, r, now)
        found = summary(session, model)
    assert found is not None
    return found


def _change(store: Store, model: str, kind: str) -> dict[str, Any]:
    """pause, resume or abort the newest rollout of ``model``."""
    allowed = {"pause": ("running",), "resume": ("paused",), "abort": ACTIVE}[kind]
    state = {"pause": "paused", "resume": "running", "abort": "aborted"}[kind]
    now = utc_now()
    with store.session() as session:
        r = _newest(session, model)
        if r is None:
            raise NotFound(f"no rollout of model {model[:128]!r}")
        if r.state not in allowed:
            raise Conflict(
                f"rollout of {model} {r.version} is {r.state}: cannot {kind} it "
                f"(only when {' or '.join(allowed)})"
            )
        r.state = state
        if kind == "resume":  # the soak time counts from the resumption
            r.stage_started_at = now
        _event(
            session, r, {"pause": "paused", "resume": "resumed", "abort": "aborted"}[kind], {}, now
        )
        if kind == "resume":
            _evaluate_locked(session, r, now)
        found = summary(session, model)
    assert found is not None
    return found


def pause(store: Store, model: str) -> dict[str, Any]:
    return _change(store, model, "pause")


def resume(store: Store, model: str) -> dict[str, Any]:
    return _change(store, model, "resume")


def abort(store: Store, model: str) -> dict[str, Any]:
    return _change(store, model, "abort")


def _figures(session: Session, r: Rollout) -> StageFigures:
    share = r.stages[r.stage]
    devices = session.execute(
        select(Device.id, Device.agent_device_id).where(
            Device.model == r.model, Device.revoked_at.is_(None)
        )
    ).all()
    in_stage = sum(1 for d in devices if rollout_bucket(d.agent_device_id or d.id, r.model) < share)
    outcomes = session.execute(
        select(RolloutDevice.outcome)
        .join(Device, Device.id == RolloutDevice.device_id)
        .where(RolloutDevice.rollout_id == r.id, Device.revoked_at.is_(None))
    ).scalars()
    counted = {"ok": 0, "failed": 0}
    for outcome in outcomes:
        counted[outcome] = counted.get(outcome, 0) + 1
    latency: dict[str, dict[str, float]] = {}
    if r.max_latency_regression is not None and r.previous_version is not None:
        rows = session.scalars(
            select(SketchRow).where(
                SketchRow.model == r.model,
                SketchRow.version.in_([r.version, r.previous_version]),
                SketchRow.metric == LATENCY,
            )
        ).all()
        by = {(row.version, row.hardware_class): quantiles(row.kll) for row in rows}
        for (version, hardware_class), figures in by.items():
            if version != r.version:
                continue
            compared = latency_regression(figures, by.get((r.previous_version, hardware_class), {}))
            if compared is not None:
                latency[hardware_class] = compared
    return StageFigures(in_stage, counted["ok"], counted["failed"], latency)


def _apply(session: Session, r: Rollout, decision: Decision, now: dt.datetime) -> None:
    if decision.action == "hold":
        return
    if decision.action == "halt":
        r.state = "halted"
        r.halt_rule = decision.rule
        r.halt_detail = decision.detail
        _event(session, r, "halted", {"rule": decision.rule, **decision.detail}, now)
        log.warning(
            "rollout of %s %d halted: %s %s", r.model, r.version, decision.rule, decision.detail
        )
    elif decision.action == "complete":
        r.state = "done"
        _event(session, r, "completed", decision.detail, now)
    else:
        _event(session, r, "promoted", {**decision.detail, "to_stage": r.stage + 1}, now)
        r.stage += 1
        r.stage_started_at = now


def _evaluate_locked(session: Session, r: Rollout, now: dt.datetime) -> Decision:
    """Decide and apply until the rollout holds (a stage may be met the moment it opens)."""
    decision = Decision("hold")
    for _ in range(len(r.stages) + 1):
        if r.state != "running":
            break
        decision = decide(r, _figures(session, r), now)
        _apply(session, r, decision, now)
        if decision.action != "promote" or r.soak_s > 0:
            break
        session.flush()
    return decision


def evaluate(store: Store, model: str, now: dt.datetime | None = None) -> Decision | None:
    """Decide the newest rollout of ``model`` now; ``None`` when there is none running."""
    with store.session() as session:
        r = _newest(session, model)
        if r is None or r.state != "running":
            return None
        return _evaluate_locked(session, r, now or utc_now())


def evaluate_all(store: Store) -> int:
    """Evaluate every running rollout (the service's timer); how many changed state."""
    with store.session() as session:
        models = session.scalars(
            select(Rollout.model).where(Rollout.state == "running").distinct()
        ).all()
    changed = 0
    for model in models:
        decision = evaluate(store, model)
        changed += decision is not None and decision.action != "hold"
    return changed


def _outcome(payload: dict[str, Any], r: Rollout) -> tuple[str, str | None] | None:
    """``("ok"|"failed", reason)`` of a report's payload for rollout ``r``, or ``None``."""
    active, cycle, gate = payload.get("active"), payload.get("cycle"), payload.get("gate") or {}
    if not isinstance(active, dict) or active.get("name") != r.model:
        return None
    if (
        isinstance(cycle, dict)
        and cycle.get("to_version") == r.version
        and cycle.get("result") == "rolled-back"
    ):
        return "failed", cycle.get("reason") or "rolled back"
    if active.get("version") != r.version:
        return None
    if r.target_sha256 is not None and active.get("sha256") != r.target_sha256:
        return None  # the same version number with other bytes is not this rollout's
    if gate.get("passed") is False or gate.get("ok") is False:
        return "failed", "health gate failed"
    return "ok", None


def record_report(store: Store, device_id: str, counter: int) -> Decision | None:
    """Count an accepted report in its model's rollout, then decide that rollout.

    The report was verified when it was accepted; its stored signed text is read here.
    Only a report that changes what the rollout knows (a device's first outcome, or one
    that turns failed) takes the rollout's lock and decides; the rest cost one read, and
    the timer decides the soak times.
    """
    with store.session() as session:
        signed = session.scalar(
            select(Report.signed_text).where(
                Report.device_id == device_id, Report.counter == counter
            )
        )
        if signed is None:
            return None
        payload = json.loads(signed).get("payload", {})
        active = payload.get("active")
        if not isinstance(active, dict) or not isinstance(active.get("name"), str):
            return None
        seen = _newest(session, active["name"], lock=False)
        if seen is None or seen.state == "aborted":  # done and halted ones keep counting
            return None
        found = _outcome(payload, seen)
        if found is None:
            return None
        row = session.get(RolloutDevice, (seen.id, device_id))
        if row is not None and (row.outcome == "failed" or row.outcome == found[0]):
            return None  # a device that failed the version stays failed
        r = session.scalars(  # from here on, one decision at a time per rollout
            select(Rollout)
            .where(Rollout.id == seen.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        outcome, reason = found
        now = utc_now()
        row = session.get(RolloutDevice, (r.id, device_id), populate_existing=True)
        if row is None:
            session.add(
                RolloutDevice(
                    rollout_id=r.id,
                    device_id=device_id,
                    outcome=outcome,
                    stage=r.stage,
                    reason=reason,
                    updated_at=now,
                )
            )
        elif row.outcome != "failed":
            row.outcome, row.reason, row.updated_at = outcome, reason, now
        session.flush()
        if r.state != "running":
            return None
        return _evaluate_locked(session, r, now)


def document(
    store: Store, key: Ed25519PrivateKey, model: str, ttl_s: float, now: dt.datetime | None = None
) -> bytes:
    """The signed rollout document of ``model`` as it stands (valid for ``ttl_s``)."""
    with store.session() as session:
        r = _newest(session, model, lock=False)
        if r is None:
            raise NotFound(f"no rollout of model {model[:128]!r}")
        shown = {k: getattr(r, k) for k in ("model", "version", "state", "stage", "id", "revision")}
        stages, sha, length = list(r.stages), r.target_sha256, r.target_length
    stopped = shown["state"] in ("halted", "aborted")
    issued = now or utc_now()
    body = {
        "type": "edgeinfer-rollout",
        "model": shown["model"],
        "version": shown["version"],
        "target": {"sha256": sha, "length": length} if sha is not None else None,
        "state": shown["state"],
        "stage": shown["stage"],
        "stages": stages,
        "share_bp": 0 if stopped else round(stages[shown["stage"]] * 100),
        "selection": rollout_docs.SELECTION,
        # a later rollout of the model, or a later change of this one, is always newer
        "doc_version": shown["id"] * 1_000_000 + shown["revision"],
        "issued_at_ms": int(issued.timestamp() * 1000),
        "expires_at_ms": int((issued.timestamp() + ttl_s) * 1000),
    }
    return rollout_docs.seal_document(key, body)


def plan_from_json(data: Any) -> tuple[str, int, Plan, dict[str, Any] | None, int | None]:
    """``(model, version, plan, target, previous_version)`` from a start request's body."""
    allowed = {
        "model",
        "version",
        "stages",
        "max_failure",
        "min_devices",
        "max_latency_regression",
        "soak_s",
        "target",
        "previous_version",
    }
    if not isinstance(data, dict) or not {"model", "version", "stages"} <= set(data) <= allowed:
        raise BadReport(
            'body: expected {"model", "version", "stages", "max_failure", "min_devices", '
            '"max_latency_regression"?, "soak_s"?, "target"?, "previous_version"?}'
        )

    def number(name: str, default: float | None, kind: type = float) -> Any:
        value = data.get(name, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and isinstance(value, int)
        if value is None and default is None:
            return None
        if not ok:
            raise BadReport(
                f"{name}: expected a {'whole ' if kind is int else ''}number, got {value!r}"
            )
        return value

    model = data["model"]
    if not isinstance(model, str) or not _MODEL.match(model):
        raise BadReport(
            f"model {str(model)[:40]!r}: expected a model name (letters, digits, ._:+-)"
        )
    stages = data["stages"]
    if not isinstance(stages, list) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in stages
    ):
        raise BadReport("stages: expected a list of percents, e.g. [5, 25, 100]")
    plan = Plan(
        stages=tuple(float(s) for s in stages),
        max_failure=float(number("max_failure", 0.1)),
        min_devices=number("min_devices", 20, int),
        max_latency_regression=number("max_latency_regression", None),
        soak_s=float(number("soak_s", 0.0)),
    )
    version = number("version", None, int)
    if version is None or version < 0:
        raise BadReport("version: expected a model version (an integer >= 0)")
    target = data.get("target")
    if target is not None and not isinstance(target, dict):
        raise BadReport('target: expected {"sha256": HEX, "length": BYTES}')
    if target is not None:
        try:
            target = rollout_docs.Target.model_validate(target).model_dump()
        except ValueError:
            raise BadReport('target: expected {"sha256": 64 hex digits, "length": BYTES}') from None
    return model, version, check_plan(plan), target, number("previous_version", None, int)
