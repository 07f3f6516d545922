"""What the service does with a device's enrollment or report, apart from HTTP.

Each function takes the request's bytes and the store, and either commits its effect or
raises a :class:`~edgeinfer.fleet.errors.Refused` naming the reason. The order of checks
is the trust order: find the claimed key, verify the signature over the exact bytes, and
only then read anything the device says. A report is committed before the caller answers
200, so an accepted report survives the service being killed the next instant.

Counters: every report carries the next number of its device's counter. A number at or
below the last accepted one is a replay (the same number with other content), a
re-delivery (the same number and the same text: accepted again, nothing changes) or out of
order (an older number never seen). The device's row is locked while this is decided.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edgeinfer.fleet import reports as wire
from edgeinfer.fleet.errors import BadReport, Conflict, Forbidden, Unauthenticated
from edgeinfer.fleet.sketches import Sandbox, merge
from edgeinfer.fleet.store import Device, EnrollToken, Report, SketchRow, Store, utc_now

__all__ = ["Accepted", "Limits", "accept_report", "enroll"]


@dataclass(frozen=True)
class Limits:
    max_skew_s: float = 300.0  # a report or enrollment dated this far ahead of our clock
    max_age_s: float = 7 * 86400.0  # oldest report accepted (a device's outbox keeps a week)


@dataclass(frozen=True)
class Accepted:
    device_id: str
    counter: int
    duplicate: bool  # the same report again (its answer was lost): nothing changed


def _check_clock(created_at_ms: int, limits: Limits, what: str) -> None:
    now_ms = time.time() * 1000
    ahead = (created_at_ms - now_ms) / 1000
    if ahead > limits.max_skew_s:
        raise BadReport(
            f"{what}: dated {ahead:.0f} s ahead of the fleet's clock (at most "
            f"{limits.max_skew_s:.0f} s): check the device's clock"
        )
    age = -ahead
    if age > limits.max_age_s:
        raise BadReport(
            f"{what}: {age:.0f} s old, older than the {limits.max_age_s:.0f} s the fleet accepts"
        )


def _locked_device(session: Session, device_id: str) -> Device | None:
    return session.scalars(
        select(Device).where(Device.id == device_id).with_for_update()
    ).one_or_none()


def enroll(store: Store, body: bytes, limits: Limits) -> tuple[str, int]:
    """Enroll the key that signed ``body``; ``(device id, last counter)``.

    The same key enrolling again (its answer was lost) gets its id back and uses no token.
    """
    text, signature, document = wire.open_envelope(body, "enrollment")
    request = wire.validate(wire.Enrollment, document, "enrollment")
    key = wire.public_key_from_b64(request.public_key)
    wire.verify(key, "enrollment", text, signature)
    _check_clock(request.created_at_ms, limits, "enrollment")
    raw_key = wire.b64decode(request.public_key, "public_key")
    device_id = wire.device_id_for(raw_key)
    token_sha = hashlib.sha256(request.token.encode("utf-8")).hexdigest()
    with store.session() as session:
        token = session.scalars(
            select(EnrollToken).where(EnrollToken.token_sha256 == token_sha).with_for_update()
        ).one_or_none()
        if token is None:
            raise Unauthenticated("enrollment: unknown enrollment token")
        device = _locked_device(session, device_id)
        if device is not None:
            if device.revoked_at is not None:
                raise Forbidden(f"enrollment: device {device_id} is revoked")
            return device.id, device.last_counter
        if token.uses_left <= 0:
            raise Forbidden(
                f"enrollment: token {token.id} is used up ({token.uses} enrollments); "
                "ask the operator for a new one"
            )
        token.uses_left -= 1
        token.uses += 1
        session.add(
            Device(
                id=device_id,
                public_key=raw_key,
                token_id=token.id,
                enrolled_at=utc_now(),
                last_counter=0,
                hardware_class=request.hardware.hardware_class,
                hardware=request.hardware.model_dump(),
                state="enrolled",
            )
        )
    return device_id, 0


def _key_of(store: Store, device_id: Any) -> Ed25519PublicKey:
    """The key of the device a report claims to come from (nothing else is read yet)."""
    if not isinstance(device_id, str):
        raise BadReport("report.device_id: expected a string")
    with store.session() as session:
        raw = session.scalars(select(Device.public_key).where(Device.id == device_id)).first()
    if raw is None:
        raise Unauthenticated(f"report: unknown device {device_id[:40]!r}; enroll first")
    return Ed25519PublicKey.from_public_bytes(raw)


def accept_report(store: Store, body: bytes, limits: Limits, sandbox: Sandbox) -> Accepted:
    """Verify, check and store one report envelope (committed before this returns)."""
    text, signature, document = wire.open_envelope(body, "report")
    key = _key_of(store, document.get("device_id"))
    wire.verify(key, "report", text, signature)
    report = wire.validate(wire.Report, document, "report")
    payload = report.payload
    _check_clock(report.created_at_ms, limits, "report")
    if payload.active is not None and payload.active.sha256 != report.bundle_sha256:
        raise BadReport("report: bundle_sha256 differs from the active slot's sha256")
    checked = [
        (s.metric, *sandbox.check(s.kll, f"payload.sketches.{i}.kll"))
        for i, s in enumerate(payload.sketches)
    ]
    text_str = text.decode("utf-8")
    with store.session() as session:
        device = _locked_device(session, report.device_id)
        if device is None:  # deleted between the two transactions
            raise Unauthenticated(f"report: unknown device {report.device_id!r}; enroll first")
        if device.revoked_at is not None:
            raise Forbidden(f"report: device {device.id} is revoked")
        if report.counter <= device.last_counter:
            earlier = session.scalars(
                select(Report.signed_text).where(
                    Report.device_id == device.id, Report.counter == report.counter
                )
            ).first()
            if earlier == text_str:
                return Accepted(device.id, report.counter, duplicate=True)
            if earlier is not None:
                raise Conflict(
                    f"report: counter {report.counter} was already used by another report "
                    "(a replay)",
                    last_counter=device.last_counter,
                )
            raise Conflict(
                f"report: counter {report.counter} is below the last accepted "
                f"({device.last_counter}): out of order",
                last_counter=device.last_counter,
            )
        now = utc_now()
        cycle = payload.cycle
        session.add(
            Report(
                device_id=device.id,
                counter=report.counter,
                received_at=now,
                created_at_ms=report.created_at_ms,
                bundle_sha256=report.bundle_sha256,
                result=cycle.result if cycle else None,
                signed_text=text_str,
                signature=signature,
            )
        )
        device.last_counter = report.counter
        device.last_report_at = now
        device.hardware_class = payload.hardware.hardware_class
        device.hardware = payload.hardware.model_dump()
        device.agent_device_id = payload.agent_device_id
        device.bundle_sha256 = report.bundle_sha256
        device.model = payload.active.name if payload.active else None
        device.active_version = payload.active.version if payload.active else None
        if cycle is not None:
            device.state, device.reason = cycle.result, cycle.reason
        if payload.active is not None:
            for metric, kll, n in checked:
                _merge_sketch(
                    session,
                    (payload.active.name, payload.active.version, device.hardware_class, metric),
                    kll,
                    n,
                    now,
                )
    return Accepted(report.device_id, report.counter, duplicate=False)


def _merge_sketch(
    session: Session, key: tuple[str, int, str, str], kll: bytes, n: int, now: dt.datetime
) -> None:
    model, version, hardware_class, metric = key
    values = {
        "model": model,
        "version": version,
        "hardware_class": hardware_class,
        "metric": metric,
        "n": n,
        "kll": kll,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(SketchRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["model", "version", "hardware_class", "metric"])
        .returning(SketchRow.id)
    )
    if session.execute(stmt).scalar_one_or_none() is not None:  # the first of its key
        return
    row = session.scalars(
        select(SketchRow)
        .where(
            SketchRow.model == model,
            SketchRow.version == version,
            SketchRow.hardware_class == hardware_class,
            SketchRow.metric == metric,
        )
        .with_for_update()
    ).one()
    row.kll = merge(row.kll, kll)
    row.n += n
    row.updated_at = now
