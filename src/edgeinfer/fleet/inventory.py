"""The operator's side of the store: tokens, the device list, one device, revocation.

Plain functions of a :class:`~edgeinfer.fleet.store.Store` returning JSON-ready dicts; the
API and, later, the dashboard pages render the same dicts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from sqlalchemy import func, select

from edgeinfer.fleet.errors import BadReport, NotFound
from edgeinfer.fleet.sketches import quantiles
from edgeinfer.fleet.store import Device, EnrollToken, Report, SketchRow, Store, utc_now

__all__ = ["create_token", "device_detail", "list_devices", "revoke", "timestamp"]

MAX_USES = 1_000_000


def timestamp(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with a Z (SQLite hands datetimes back without their zone)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_token(store: Store, uses: int) -> dict[str, Any]:
    """A new enrollment token good for ``uses`` enrollments; its text is shown only now."""
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES:
        raise BadReport(f"uses: expected an integer from 1 to {MAX_USES}, got {uses!r}")
    token = "et_" + secrets.token_urlsafe(24)
    token_id = secrets.token_hex(4)
    with store.session() as session:
        session.add(
            EnrollToken(
                id=token_id,
                token_sha256=hashlib.sha256(token.encode("utf-8")).hexdigest(),
                uses_left=uses,
                uses=0,
                created_at=utc_now(),
            )
        )
    return {"id": token_id, "token": token, "uses": uses}


def _summary(d: Device) -> dict[str, Any]:
    return {
        "id": d.id,
        "model": d.model,
        "version": d.active_version,
        "state": "revoked" if d.revoked_at is not None else d.state,
        "hardware_class": d.hardware_class,
        "last_report_at": timestamp(d.last_report_at),
    }


def list_devices(
    store: Store, limit: int = 1000, offset: int = 0, after: str | None = None
) -> list[dict[str, Any]]:
    """Devices in id order, ``limit`` at a time: those after the id ``after`` (a page costs
    the same wherever it starts) or, without it, past the first ``offset``."""
    query = select(Device).order_by(Device.id).limit(limit)
    query = query.where(Device.id > after) if after is not None else query.offset(offset)
    with store.session() as session:
        return [_summary(d) for d in session.scalars(query)]


def device_detail(store: Store, device_id: str, reports: int = 20) -> dict[str, Any]:
    """One device, its last ``reports`` reports, and the merged latency of what it runs."""
    with store.session() as session:
        d = session.get(Device, device_id)
        if d is None:
            raise NotFound(f"no device {device_id[:40]!r}")
        recent = session.execute(
            select(Report.counter, Report.received_at, Report.result, Report.bundle_sha256)
            .where(Report.device_id == d.id)
            .order_by(Report.counter.desc())
            .limit(reports)
        ).all()
        count = session.scalar(select(func.count()).where(Report.device_id == d.id))
        sketches = []
        if d.model is not None and d.active_version is not None:
            for row in session.scalars(
                select(SketchRow).where(
                    SketchRow.model == d.model,
                    SketchRow.version == d.active_version,
                    SketchRow.hardware_class == d.hardware_class,
                )
            ):
                sketches.append({"metric": row.metric, "n": row.n, **quantiles(row.kll)})
        return {
            **_summary(d),
            "reason": d.reason,
            "bundle_sha256": d.bundle_sha256,
            "agent_device_id": d.agent_device_id,
            "hardware": d.hardware,
            "enrolled_at": timestamp(d.enrolled_at),
            "revoked_at": timestamp(d.revoked_at),
            "last_counter": d.last_counter,
            "reports": count,
            "recent_reports": [
                {
                    "counter": r.counter,
                    "received_at": timestamp(r.received_at),
                    "result": r.result,
                    "bundle_sha256": r.bundle_sha256,
                }
                for r in recent
            ],
            "fleet_latency": sketches,  # merged over every device of this class and version
        }


def revoke(store: Store, device_id: str) -> dict[str, Any]:
    """Refuse the device's reports from now on (its key stays known, so it cannot re-enroll)."""
    with store.session() as session:
        d = session.scalars(
            select(Device).where(Device.id == device_id).with_for_update()
        ).one_or_none()
        if d is None:
            raise NotFound(f"no device {device_id[:40]!r}")
        if d.revoked_at is None:
            d.revoked_at = utc_now()
        return {"id": d.id, "revoked_at": timestamp(d.revoked_at)}
