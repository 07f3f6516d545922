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

Group commit: the checks that need no database (the envelope, the signature, the shapes,
the clock, the sketches) run on the caller's thread; the writes of reports arriving
together share one transaction (:class:`_GroupCommit`): whichever caller finds no batch
being written writes every report queued so far, commits once, and hands each caller its
own answer. Each caller returns only after the commit that holds its report, so 200 still
means durable, and one device's refusal (a replay, a revoked key) refuses that report
alone.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Integer, String, Table, Text, bindparam, case, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from edgeinfer.fleet import reports as wire
from edgeinfer.fleet.errors import BadReport, Conflict, Forbidden, Refused, Unauthenticated
from edgeinfer.fleet.sketches import Sandbox, merge
from edgeinfer.fleet.store import (
    Device,
    EnrollToken,
    Report,
    Rollout,
    SketchRow,
    Store,
    utc_now,
)

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
    in_rollout: bool = True  # its model had a rollout (not aborted) when it was stored


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
    _writer(store).keys.put(device_id, key)  # its first report needs no read for it
    return device_id, 0


_KEYS_CACHED = 200_000  # device keys kept in memory (a device's id is its key's hash)


class _Keys:
    """Device keys by id. An id is the hash of its key, so a cached key is never stale;
    whether the device is still enrolled and not revoked is decided when its report is
    written, under the device's row lock."""

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._lock = threading.Lock()

    def get(self, store: Store, device_id: str) -> Ed25519PublicKey | None:
        with self._lock:
            found = self._keys.get(device_id)
        if found is not None:
            return found
        with store.read() as session:
            raw = session.scalars(select(Device.public_key).where(Device.id == device_id)).first()
        if raw is None:
            return None
        key = Ed25519PublicKey.from_public_bytes(raw)
        self.put(device_id, key)
        return key

    def put(self, device_id: str, key: Ed25519PublicKey) -> None:
        with self._lock:
            if len(self._keys) >= _KEYS_CACHED:
                self._keys.clear()
            self._keys[device_id] = key


@dataclass(eq=False)
class _Pending:
    """A verified report waiting for its batch to be written."""

    report: wire.Report
    text: str
    signature: bytes
    checked: list[tuple[str, bytes, int]]  # (metric, sandbox-checked sketch, count)
    done: threading.Event = field(default_factory=threading.Event)
    result: Accepted | None = None
    error: Exception | None = None


class _GroupCommit:
    """One store's report writer: a batch at a time, every queued report in each batch."""

    max_batch = 256

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = _Keys()
        self._queue: list[_Pending] = []
        self._queued = threading.Lock()  # guards _queue
        self._writing = threading.Lock()  # held by the caller writing a batch

    def write(self, pending: _Pending) -> Accepted:
        with self._queued:
            self._queue.append(pending)
        while not pending.done.is_set():
            with self._writing:
                if pending.done.is_set():
                    break
                with self._queued:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                self._commit(batch)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            try:
                with self.store.session() as session:
                    answers: list[Accepted | Exception] = list(_write_batch(session, batch))
            except SQLAlchemyError:
                if len(batch) == 1:
                    raise
                # one report's write failed the batch: each again alone, so it fails alone
                answers = []
                for pending in batch:
                    try:
                        with self.store.session() as session:
                            answers.extend(_write_batch(session, [pending]))
                    except SQLAlchemyError as exc:
                        answers.append(exc)
            for pending, answer in zip(batch, answers, strict=True):
                if isinstance(answer, Accepted):
                    pending.result = answer
                else:
                    pending.error = answer
        except Exception as exc:  # the database is down: every report of the batch waits
            for pending in batch:
                pending.error = exc
        finally:
            for pending in batch:
                if pending.result is None and pending.error is None:
                    pending.error = RuntimeError("report batch ended without an answer")
                pending.done.set()


_writers: weakref.WeakKeyDictionary[Store, _GroupCommit] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def _writer(store: Store) -> _GroupCommit:
    with _writers_lock:
        found = _writers.get(store)
        if found is None:
            found = _writers[store] = _GroupCommit(store)
        return found


def _key_of(store: Store, device_id: Any) -> Ed25519PublicKey:
    """The key of the device a report claims to come from (nothing else is read yet)."""
    if not isinstance(device_id, str):
        raise BadReport("report.device_id: expected a string")
    key = _writer(store).keys.get(store, device_id)
    if key is None:
        raise Unauthenticated(f"report: unknown device {device_id[:40]!r}; enroll first")
    return key


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
    pending = _Pending(report, text.decode("utf-8"), signature, checked)
    return _writer(store).write(pending)


_DEVICES = cast(Table, Device.__table__)
_REPORTS = cast(Table, Report.__table__)
_SKETCHES = cast(Table, SketchRow.__table__)
_SketchKey = tuple[str, int, str, str]  # (model, version, hardware class, metric)


@dataclass
class _Batch:
    """What one batch's transaction knows and will write (plain rows, no ORM objects)."""

    devices: dict[str, tuple[Any, int]]  # id -> (revoked_at, last counter), rows locked
    rollout_models: set[str]  # models with a rollout that is not aborted
    now: dt.datetime
    texts: dict[tuple[str, int], str] = field(default_factory=dict)  # written in this batch
    reports: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    sketches: dict[_SketchKey, tuple[bytes, int]] = field(default_factory=dict)


@functools.cache
def _device_update() -> Any:
    """``UPDATE devices`` by id from a report's row (``executemany``); the state and the
    reason change only when the report has a cycle (``has_cycle``)."""
    devices = _DEVICES
    plain = ("last_counter", "last_report_at", "hardware_class", "hardware", "agent_device_id",
             "bundle_sha256", "model", "active_version")  # fmt: skip
    # bind names differ from the columns' (SQLAlchemy keeps those for its own SET clause)
    has_cycle = bindparam("b_has_cycle", type_=Integer) == 1
    values: dict[str, Any] = {n: bindparam(f"b_{n}", type_=devices.c[n].type) for n in plain}
    values["state"] = case((has_cycle, bindparam("b_state", type_=String)), else_=devices.c.state)
    values["reason"] = case((has_cycle, bindparam("b_reason", type_=Text)), else_=devices.c.reason)
    return update(devices).where(devices.c.id == bindparam("b_id")).values(**values)


def _write_batch(session: Session, batch: list[_Pending]) -> list[Accepted | Refused]:
    """Store the batch's reports in ``session``; each one's answer, in order.

    The devices' rows are locked in id order, then the merged sketches' rows in key order
    (:func:`_merge_sketch`), so two replicas writing batches never wait on each other in
    a cycle. The rows go in with one statement per table (``executemany``).
    """
    devices = _DEVICES
    ids = sorted({p.report.device_id for p in batch})
    locked = session.execute(
        select(devices.c.id, devices.c.revoked_at, devices.c.last_counter)
        .where(devices.c.id.in_(ids))
        .order_by(devices.c.id)
        .with_for_update()
    ).all()
    rollout_models = set(
        session.scalars(select(Rollout.model).where(Rollout.state != "aborted").distinct())
    )
    state = _Batch({row.id: (row.revoked_at, row.last_counter) for row in locked},
                   rollout_models, utc_now())  # fmt: skip
    answers: list[Accepted | Refused] = []
    for pending in batch:
        try:
            answers.append(_write_one(session, state, pending))
        except Refused as exc:
            answers.append(exc)
    if state.reports:
        session.execute(insert(_REPORTS), state.reports)
        session.execute(
            _device_update(), [{f"b_{k}": v for k, v in row.items()} for row in state.updates]
        )
    for key in sorted(state.sketches):
        kll, n = state.sketches[key]
        _merge_sketch(session, key, kll, n, state.now)
    return answers


def _write_one(session: Session, state: _Batch, pending: _Pending) -> Accepted:
    report, text_str, payload = pending.report, pending.text, pending.report.payload
    found = state.devices.get(report.device_id)
    if found is None:  # deleted between the two transactions
        raise Unauthenticated(f"report: unknown device {report.device_id!r}; enroll first")
    revoked_at, last_counter = found
    if revoked_at is not None:
        raise Forbidden(f"report: device {report.device_id} is revoked")
    if report.counter <= last_counter:
        earlier = state.texts.get((report.device_id, report.counter))
        if earlier is None:
            earlier = session.scalars(
                select(Report.signed_text).where(
                    Report.device_id == report.device_id, Report.counter == report.counter
                )
            ).first()
        if earlier == text_str:
            return Accepted(report.device_id, report.counter, duplicate=True)
        if earlier is not None:
            raise Conflict(
                f"report: counter {report.counter} was already used by another report (a replay)",
                last_counter=last_counter,
            )
        raise Conflict(
            f"report: counter {report.counter} is below the last accepted "
            f"({last_counter}): out of order",
            last_counter=last_counter,
        )
    cycle, active = payload.cycle, payload.active
    state.devices[report.device_id] = (revoked_at, report.counter)
    state.texts[(report.device_id, report.counter)] = text_str
    state.reports.append(
        {
            "device_id": report.device_id,
            "counter": report.counter,
            "received_at": state.now,
            "created_at_ms": report.created_at_ms,
            "bundle_sha256": report.bundle_sha256,
            "result": cycle.result if cycle else None,
            "signed_text": text_str,
            "signature": pending.signature,
        }
    )
    row: dict[str, Any] = {
        "id": report.device_id,
        "last_counter": report.counter,
        "last_report_at": state.now,
        "hardware_class": payload.hardware.hardware_class,
        "hardware": payload.hardware.model_dump(),
        "agent_device_id": payload.agent_device_id,
        "bundle_sha256": report.bundle_sha256,
        "model": active.name if active else None,
        "active_version": active.version if active else None,
    }
    # without a cycle, the device's state and reason stay as they were (_device_update)
    row["has_cycle"] = 1 if cycle is not None else 0
    row["state"], row["reason"] = (cycle.result, cycle.reason) if cycle else (None, None)
    state.updates.append(row)
    if active is not None:
        for metric, kll, n in pending.checked:
            key = (active.name, active.version, payload.hardware.hardware_class, metric)
            before = state.sketches.get(key)
            state.sketches[key] = (
                (kll, n) if before is None else (merge(before[0], kll), before[1] + n)
            )
    in_rollout = active is not None and active.name in state.rollout_models
    return Accepted(report.device_id, report.counter, duplicate=False, in_rollout=in_rollout)


def _merge_sketch(
    session: Session, key: tuple[str, int, str, str], kll: bytes, n: int, now: dt.datetime
) -> None:
    """Merge ``kll`` into the stored sketch of ``key`` under its row lock (made if none)."""
    model, version, hardware_class, metric = key
    sketches = _SKETCHES
    stored = (
        select(sketches.c.id, sketches.c.kll, sketches.c.n)
        .where(
            sketches.c.model == model,
            sketches.c.version == version,
            sketches.c.hardware_class == hardware_class,
            sketches.c.metric == metric,
        )
        .with_for_update()
    )
    found = session.execute(stored).first()
    if found is None:
        dialect = session.get_bind().dialect.name
        first = pg_insert(sketches) if dialect == "postgresql" else sqlite_insert(sketches)
        made = session.execute(
            first.values(model=model, version=version, hardware_class=hardware_class,
                         metric=metric, n=n, kll=kll, updated_at=now)
            .on_conflict_do_nothing(index_elements=["model", "version", "hardware_class", "metric"])
            .returning(sketches.c.id)
        ).scalar_one_or_none()  # fmt: skip
        if made is not None:  # the first of its key
            return
        found = session.execute(stored).one()  # another replica made it meanwhile
    session.execute(
        update(sketches)
        .where(sketches.c.id == found.id)
        .values(kll=merge(found.kll, kll), n=found.n + n, updated_at=now)
    )
