"""Prometheus /metrics after real traffic, and the one error-to-status mapping."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import serve_helpers as h

import edgeinfer.errors as core_errors
import edgeinfer.serve.errors as serve_errors
from edgeinfer.errors import BackendError, EdgeInferError
from edgeinfer.protocol import ProtocolError
from edgeinfer.serve.errors import ServeError, error_status


def test_metrics_content(tmp_path: Path) -> None:
    h.repository(tmp_path)
    with h.running(h.config(tmp_path)) as srv, httpx.Client(base_url=srv.url) as http:
        ok = h.infer_body(np.ones((3, 4), np.float32))
        for _ in range(3):
            assert http.post("/v2/models/mlp/infer", json=ok).status_code == 200
        assert http.post("/v2/models/mlp/infer", content=b"{").status_code == 400
        assert http.post("/v2/models/ghost-123/infer", json=ok).status_code == 404
        r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'edgeinfer_requests_total{model="mlp",protocol="rest",status="200"} 3.0',
        'edgeinfer_requests_total{model="mlp",protocol="rest",status="400"} 1.0',
        # an unknown model name from a request never becomes a label
        'edgeinfer_requests_total{model="_unknown",protocol="rest",status="404"} 1.0',
        'edgeinfer_batch_size_sum{model="mlp"} 9.0',
        'edgeinfer_queue_depth{model="mlp"} 0.0',
        'edgeinfer_model_ready{model="mlp",version="2"} 1.0',
        'edgeinfer_model_ready{model="fixed",version="1"} 1.0',
    ]:
        assert line in text, line
    for family in [
        'edgeinfer_queue_duration_seconds_bucket{le="0.001",model="mlp"}',
        'edgeinfer_compute_duration_seconds_count{model="mlp"} 3.0',
        'edgeinfer_request_duration_seconds_count{model="mlp",protocol="rest"} 4.0',
        "# TYPE edgeinfer_rejections_total counter",
    ]:
        assert family in text, family
    assert "ghost-123" not in text


def _leaves(module: object, root: type) -> list[type]:
    return [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, root) and v is not root
    ]


@pytest.mark.parametrize("cls", _leaves(serve_errors, ServeError))
def test_every_serve_error_has_a_4xx_or_5xx(cls: type[ServeError]) -> None:
    status = error_status(cls("x"))
    assert 400 <= status.status < 600 and status.grpc_code.isupper()
    import grpc

    assert hasattr(grpc.StatusCode, status.grpc_code)


@pytest.mark.parametrize("cls", _leaves(core_errors, EdgeInferError))
def test_core_errors_are_mapped(cls: type[EdgeInferError]) -> None:
    exc = cls("pkg", "extra", "purpose") if cls.__name__ == "MissingDependencyError" else cls("x")
    status = error_status(exc)
    assert status.status == (400 if issubclass(cls, core_errors.InputError) else 500)


def test_mapping_specifics() -> None:
    assert error_status(ProtocolError("bad")).status == 400
    assert error_status(ValueError("secret detail")) == (
        500,
        "INTERNAL",
        "internal server error (ValueError)",
    )

    class InvalidArgument(Exception):  # the name ONNX Runtime gives its input errors
        pass

    try:
        raise BackendError("inference failed") from InvalidArgument("shape")
    except BackendError as exc:
        assert error_status(exc).status == 400
