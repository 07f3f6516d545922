"""Prometheus metrics of one server, in its own registry (several servers may share a process).

* ``edgeinfer_requests_total{model,protocol,status}``: requests by model and HTTP status
  (gRPC answers are counted with the equivalent HTTP status);
* ``edgeinfer_request_duration_seconds{model,protocol}``: end to end, in the server;
* ``edgeinfer_queue_duration_seconds{model}`` and ``edgeinfer_compute_duration_seconds{model}``:
  the same latency split into waiting in the model's queue and running the model;
* ``edgeinfer_batch_size{model}``: rows per model run; ``edgeinfer_queue_depth{model}``:
  requests waiting now; ``edgeinfer_drain_rate{model}``: requests per second the queue drains
  at, as admission control estimates it (0 until measured);
* ``edgeinfer_rejections_total{model,reason}``: requests refused by backpressure, each counted
  once: ``queue_full`` (the queue held ``max_queue_size``), ``deadline`` (it could not have
  started within its queue timeout at the current drain rate) -- both refused before the body
  is read -- and ``queue_timeout`` (admitted, then waited too long). Every one of them is also
  in ``edgeinfer_requests_total`` with status 503;
* ``edgeinfer_model_ready{model,version}``: 1 while loaded.

Model labels only ever hold names of models in the repository (unknown names from requests
are counted as ``_unknown``), so a client cannot grow the label set.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["UNKNOWN_MODEL", "Metrics"]

UNKNOWN_MODEL = "_unknown"
_LATENCY = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics; ``render()`` gives the /metrics body and content type."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgeinfer_requests",
            "Requests by model, protocol and status",
            ["model", "protocol", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "edgeinfer_request_duration_seconds",
            "Request latency inside the server",
            ["model", "protocol"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "edgeinfer_queue_duration_seconds",
            "Time waiting in the model's queue",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "edgeinfer_compute_duration_seconds",
            "Time running the model, per batch",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "edgeinfer_batch_size", "Rows per model run", ["model"], buckets=_BATCH, registry=r
        )
        self.queue_depth = Gauge(
            "edgeinfer_queue_depth",
            "Requests waiting in the model's queue",
            ["model"],
            registry=r,
        )
        self.drain_rate = Gauge(
            "edgeinfer_drain_rate",
            "Requests per second the model's queue drains at (estimate; 0 until measured)",
            ["model"],
            registry=r,
        )
        self.rejections = Counter(
            "edgeinfer_rejections",
            "Requests refused by backpressure",
            ["model", "reason"],
            registry=r,
        )
        self.model_ready = Gauge(
            "edgeinfer_model_ready",
            "1 while a model version is loaded",
            ["model", "version"],
            registry=r,
        )

        # labelled children, looked up once: every request passes here, refusals included
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def observe_request(self, model: str, protocol: str, status: int, seconds: float) -> None:
        key = (model, protocol, status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = self.requests.labels(model, protocol, str(status))
        counter.inc()
        timer = self._timed.get(key[:2])
        if timer is None:
            timer = self._timed[key[:2]] = self.request_seconds.labels(model, protocol)
        timer.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
