"""Prometheus metrics of the fleet service: devices by version and state, reports in and out.

Two kinds of figures, kept apart because replicas share one database but not their memory:

* **fleet state** (devices by model, version and state; rollouts by state) is read from the
  database when Prometheus scrapes, so every replica answers the same numbers;
* **traffic** (reports received, accepted, refused by reason) is counted by this process,
  as Prometheus counters always are: sum them over replicas with ``sum(...)``.

:class:`ReportObserver` is an ASGI middleware that watches the answers to
``POST /v1/reports`` (the status and the one-line ``{"error"}``) and sorts refusals into a
handful of reasons, so the device routes need no metrics code of their own. Each app has
its own :class:`~prometheus_client.CollectorRegistry` (several apps may share a process
in tests, and the global registry would mix them).

``/metrics`` is behind the admin token, as ``edgeinfer serve`` puts it behind its tokens
when it has any (a fleet service always has one): give Prometheus the token as a bearer
credential (``authorization: credentials_file:`` in its scrape config).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeinfer.fleet.store import Device, Store

__all__ = ["CONTENT_TYPE_LATEST", "FleetMetrics", "ReportObserver", "refusal_reason"]

REASONS = (
    "malformed",
    "clock-skew",
    "unknown-device",
    "bad-signature",
    "revoked",
    "replayed",
    "out-of-order",
    "too-large",
    "body-timeout",
    "other",
)


def refusal_reason(status: int, error: str) -> str:
    """One of :data:`REASONS` for a refused report's status and one-line error."""
    text = error.lower()
    if status == 413:
        return "too-large"
    if status == 408:
        return "body-timeout"
    if status == 409:
        return "replayed" if "replay" in text else "out-of-order"
    if status == 403:
        return "revoked"
    if status == 401:
        return "bad-signature" if "signature" in text else "unknown-device"
    if status == 400:
        return "clock-skew" if ("clock" in text or " old," in text) else "malformed"
    return "other"


def state_label(state: str, revoked: bool) -> str:
    return "revoked" if revoked else state


def devices_by_version(store: Store) -> list[tuple[str, str, str, int]]:
    """``(model, version, state, count)`` over every device (revoked ones as ``revoked``)."""
    revoked = case((Device.revoked_at.is_not(None), 1), else_=0)
    with store.session() as session:
        rows = session.execute(
            select(Device.model, Device.active_version, Device.state, revoked, func.count())
            .group_by(Device.model, Device.active_version, Device.state, revoked)
            .order_by(Device.model, Device.active_version, Device.state)
        ).all()
    counts: dict[tuple[str, str, str], int] = {}
    for model, version, state, is_revoked, n in rows:
        key = (
            model or "",
            "" if version is None else str(version),
            state_label(state, bool(is_revoked)),
        )
        counts[key] = counts.get(key, 0) + int(n)
    return [(*key, n) for key, n in counts.items()]


class _StoreCollector(Collector):
    """Reads the fleet's state from the database at each scrape."""

    def __init__(self, store: Store, rollouts: Callable[[], list[dict[str, Any]]]) -> None:
        self.store = store
        self.rollouts = rollouts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        devices = GaugeMetricFamily(
            "edgeinfer_fleet_devices",
            "Enrolled devices by model, active version and state (the last cycle's result)",
            labels=["model", "version", "state"],
        )
        for model, version, state, n in devices_by_version(self.store):
            devices.add_metric([model, version, state], n)
        yield devices
        share = GaugeMetricFamily(
            "edgeinfer_fleet_rollout_share_percent",
            "Share of the model's devices (percent) the newest rollout lets through now "
            "(0 once halted or aborted), by state",
            labels=["model", "version", "state"],
        )
        outcomes = GaugeMetricFamily(
            "edgeinfer_fleet_rollout_devices",
            "Devices that reported on the newest rollout's version, by outcome",
            labels=["model", "version", "outcome"],
        )
        halted = GaugeMetricFamily(
            "edgeinfer_fleet_rollout_halted",
            "1 when the newest rollout of a model halted itself, labelled with the rule",
            labels=["model", "version", "rule"],
        )
        for r in self.rollouts():
            model, version = str(r.get("model", "")), str(r.get("version", ""))
            share.add_metric([model, version, str(r.get("state", ""))], float(r.get("share") or 0))
            for outcome in ("ok", "failed"):
                outcomes.add_metric([model, version, outcome], float(r.get(outcome) or 0))
            if r.get("state") == "halted":
                halted.add_metric([model, version, str(r.get("halt_rule") or "")], 1.0)
        yield share
        yield outcomes
        yield halted


class FleetMetrics:
    """The registry of one fleet app: traffic counters and the database collector."""

    def __init__(
        self, store: Store, rollouts: Callable[[], list[dict[str, Any]]] = lambda: []
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.received = Counter(
            "edgeinfer_fleet_reports_received",
            "Reports answered by this replica (accepted, duplicate or refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.refused = Counter(
            "edgeinfer_fleet_reports_refused",
            "Reports this replica refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.refused.labels(reason)  # every reason exported from the start, at 0
        for outcome in ("accepted", "duplicate", "refused"):
            self.received.labels(outcome)
        self.registry.register(_StoreCollector(store, rollouts))
        self._lock = threading.Lock()
        self._refused_counts: dict[str, int] = {}

    def observe_report(self, status: int, body: bytes) -> None:
        """Count one answer to ``POST /v1/reports`` (5xx are not answers: the device retries)."""
        if status == 200:
            duplicate = False
            with contextlib.suppress(ValueError, AttributeError):
                duplicate = bool(json.loads(body).get("duplicate"))
            self.received.labels("duplicate" if duplicate else "accepted").inc()
        elif 400 <= status < 500:
            try:
                error = str(json.loads(body).get("error", ""))
            except (ValueError, AttributeError):
                error = ""
            reason = refusal_reason(status, error)
            self.received.labels("refused").inc()
            self.refused.labels(reason).inc()
            with self._lock:
                self._refused_counts[reason] = self._refused_counts.get(reason, 0) + 1

    def refused_counts(self) -> dict[str, int]:
        """Refusals by reason since this replica started (for the overview page)."""
        with self._lock:
            return dict(sorted(self._refused_counts.items()))

    def render(self) -> bytes:
        """The text exposition (reads the database: call it off the event loop)."""
        return generate_latest(self.registry)


class ReportObserver:
    """ASGI middleware: hands every answer to ``POST /v1/reports`` to ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: FleetMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != "/v1/reports"
            or scope.get("method") != "POST"
        ):
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                if len(body) < 4096:  # the answers are one short JSON object
                    body.extend(message.get("body", b"")[: 4096 - len(body)])
                if not message.get("more_body", False):
                    self.metrics.observe_report(status, bytes(body))
            await send(message)

        await self.app(scope, receive, observe)
