"""Overload on a real server: refusals before decoding, Retry-After, deadline-aware admission.

The model's one inference thread is held busy (a blocking job on the batcher's own thread
pool), so the queue stays exactly as full as a test makes it for as long as it needs: no
race with a model run finishing, and no timing in any assertion.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.protocol import grpc_codec as gc
from edgeinfer.serve import BackgroundServer, BatchConfig
from edgeinfer.serve.admission import MIN_RETRY_AFTER_S, Admission
from edgeinfer.serve.app import REPLICA_HEADER, retry_headers
from edgeinfer.serve.batching import Batcher
from edgeinfer.serve.grpc import peek_model

INFER = "/inference.GRPCInferenceService/ModelInfer"
X = np.ones((1, 4), np.float32)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait for a server state (not a timing assertion: the limit only stops a hung test)."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the server never reached: {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def _held(batcher: Batcher) -> Iterator[None]:
    """Nothing leaves ``batcher``'s queue until the block ends (its one thread is busy)."""
    gate = threading.Event()
    batcher._pool.submit(gate.wait)
    try:
        yield
    finally:
        gate.set()


def _grpc_infer(channel: grpc.Channel) -> Callable[..., object]:
    call: Callable[..., object] = channel.unary_unary(
        INFER,
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=gc.pb.ModelInferResponse.FromString,
    )
    return call


def _grpc_request(model: str = "m") -> object:
    msg = gc.pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(X.tobytes())
    return msg


def _grpc_error(call: Callable[..., object], payload: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(payload, **kw)
    return info.value


def _trailers(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]


# A ModelInferRequest naming model "m" (field 1), then bytes that are not protobuf at all.
GARBAGE_FOR_M = b"\x0a\x01m" + b"\xff\xff\xff\xff not protobuf"


@contextlib.contextmanager
def _full_queue(
    srv: BackgroundServer, queued: int
) -> Iterator[tuple[Batcher, list[Future[httpx.Response]]]]:
    """One request running (held) and ``queued`` more waiting in model m's queue."""
    batcher = srv.dataplane.resolve("m").batcher
    body = h.infer_body(X)

    def post() -> httpx.Response:
        return httpx.post(srv.url + "/v2/models/m/infer", json=body, timeout=60)

    with ThreadPoolExecutor(queued + 1) as pool, _held(batcher):
        pending = [pool.submit(post)]
        _wait_for(lambda: batcher._busy == 1, "the first request is running")
        for depth in range(1, queued + 1):
            pending.append(pool.submit(post))
            _wait_for(lambda: batcher.queue_depth == depth, f"{depth} requests queued")
        yield batcher, pending
    for f in pending:
        assert f.result().status_code == 200, f.result().text


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    h.mlp(tmp_path / "m" / "1" / "model.onnx")
    return tmp_path


def _server(
    repo: Path, max_queue_size: int, **changes: Any
) -> contextlib.AbstractContextManager[BackgroundServer]:
    config = BatchConfig(
        max_batch_size=1, instances=1, max_queue_size=max_queue_size, queue_timeout_s=60.0
    )
    return h.running(h.config(repo, batching=config, **changes))


def test_full_queue_refuses_before_decoding_with_retry_after(repo: Path) -> None:
    with (
        _server(repo, max_queue_size=1) as srv,
        grpc.insecure_channel(srv.grpc_target) as channel,
        httpx.Client(base_url=srv.url, timeout=30) as http,
    ):
        infer = _grpc_infer(channel)
        # not overloaded: the garbage is what it is, and an unreadable body is a 400
        err = _grpc_error(infer, GARBAGE_FOR_M)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert http.post("/v2/models/m/infer", content=b"{").status_code == 400
        before = http.get("/metrics").text

        with _full_queue(srv, queued=1):
            # REST: refused before the body is read -- even a body that is not JSON
            for content in (b"{", h.infer_body(X)):
                kw = {"content": content} if isinstance(content, bytes) else {"json": content}
                r = http.post("/v2/models/m/infer", **kw)  # type: ignore[arg-type]
                assert r.status_code == 503, r.text
                assert "overloaded: its queue holds 1 requests" in r.json()["error"]
                assert r.headers["content-type"] == "application/json"
                assert int(r.headers["retry-after"]) >= 1  # whole seconds (RFC 9110)
                assert int(r.headers["retry-after-ms"]) >= 1
            # gRPC: refused before the message is parsed -- even one that is not protobuf
            for payload in (GARBAGE_FOR_M, _grpc_request()):
                err = _grpc_error(infer, payload)
                assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                assert "overloaded" in err.details()  # type: ignore[attr-defined]
                trailers = _trailers(err)
                assert int(trailers["retry-after-ms"]) >= 1
                assert trailers["grpc-retry-pushback-ms"] == trailers["retry-after-ms"]
            # a request the early check cannot judge is answered as usual
            assert http.post("/v2/models/nope/infer", content=b"{").status_code == 404
            err = _grpc_error(infer, _grpc_request("nope"))
            assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            after = http.get("/metrics").text

        assert http.post("/v2/models/m/infer", json=h.infer_body(X)).status_code == 200

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    # every refusal counted once, as a rejection and as a 503 of its protocol
    assert delta("edgeinfer_rejections_total", model="m", reason="queue_full") == 4
    assert delta("edgeinfer_rejections_total", model="m", reason="deadline") == 0
    assert delta("edgeinfer_requests_total", model="m", protocol="rest", status="503") == 2
    assert delta("edgeinfer_requests_total", model="m", protocol="grpc", status="503") == 2
    assert _metric(after, "edgeinfer_queue_depth", model="m") == 1


def test_refusal_names_the_replica(repo: Path) -> None:
    """A refusal is answered before the app's middleware runs, and still says who answered
    (scale-out: a client behind a load balancer can tell which replica is overloaded)."""
    with _server(repo, max_queue_size=1, replica_id="r7", grpc_port=None) as srv:
        ok = httpx.get(srv.url + "/v2/health/live")
        assert ok.headers[REPLICA_HEADER] == "r7"
        with _full_queue(srv, queued=1):
            r = httpx.post(srv.url + "/v2/models/m/infer", json=h.infer_body(X), timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers[REPLICA_HEADER] == "r7"
        assert r.headers.get_list(REPLICA_HEADER) == ["r7"]  # once, not once per layer
        # inference answers skip Starlette's layers too (front._DirectInfer): still named,
        # once, whether they succeed or fail
        answered = httpx.post(srv.url + "/v2/models/m/infer", json=h.infer_body(X), timeout=30)
        assert answered.status_code == 200, answered.text
        bad = httpx.post(srv.url + "/v2/models/m/infer", content=b"{", timeout=30)
        assert bad.status_code == 400 and "error" in bad.json(), bad.text
        unknown = httpx.post(srv.url + "/v2/models/nope/infer", json=h.infer_body(X), timeout=30)
        assert unknown.status_code == 404 and "error" in unknown.json(), unknown.text
        for resp in (answered, bad, unknown):
            assert resp.headers.get_list(REPLICA_HEADER) == ["r7"], resp.headers


def test_deadline_aware_admission(repo: Path) -> None:
    """A request that could not start within its queue timeout is refused at once."""
    with (
        _server(repo, max_queue_size=8) as srv,
        grpc.insecure_channel(srv.grpc_target) as channel,
        httpx.Client(base_url=srv.url, timeout=30) as http,
    ):
        infer = _grpc_infer(channel)
        with _full_queue(srv, queued=1) as (batcher, _):
            for _ in range(3):  # as measured: the queue drains one request every 10 s
                batcher.admission.observe(10.0, 1)
            assert batcher.admission.wait_s(1) == pytest.approx(10.0)
            # the request's own timeout (5 s) is shorter than the 10 s wait: refused at once
            body = h.infer_body(X, parameters={"timeout": 5_000_000})
            r = http.post("/v2/models/m/infer", json=body)
            assert r.status_code == 503, r.text
            assert re.search(
                r"1 queued requests take about 10000 ms to drain, longer than the queue "
                r"timeout of 5000 ms",
                r.json()["error"],
            )
            assert int(r.headers["retry-after"]) >= 1
            # a gRPC client's deadline (5 s) counts the same way, before the message is parsed
            err = _grpc_error(infer, GARBAGE_FOR_M, timeout=5)
            assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert "longer than the queue timeout" in err.details()  # type: ignore[attr-defined]
            assert int(_trailers(err)["retry-after-ms"]) >= 1
            # with the model's queue timeout (60 s) it is worth waiting: admitted
            assert batcher.admission.check(1) is None
            metrics = http.get("/metrics").text
    assert _metric(metrics, "edgeinfer_rejections_total", model="m", reason="deadline") == 2
    assert _metric(metrics, "edgeinfer_rejections_total", model="m", reason="queue_full") == 0
    assert "# TYPE edgeinfer_drain_rate gauge" in metrics


def test_queue_timeout_answer_carries_retry_after(repo: Path) -> None:
    with _server(repo, max_queue_size=4) as srv:
        batcher = srv.dataplane.resolve("m").batcher
        body = h.infer_body(X, parameters={"timeout": 1000})  # 1 ms in the queue at most
        with ThreadPoolExecutor(2) as pool, _held(batcher):
            first = pool.submit(httpx.post, srv.url + "/v2/models/m/infer", json=h.infer_body(X))
            _wait_for(lambda: batcher._busy == 1, "the first request is running")
            r = httpx.post(srv.url + "/v2/models/m/infer", json=body, timeout=30)
        assert first.result().status_code == 200
    assert r.status_code == 503 and "queue timeout" in r.json()["error"], r.text
    assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after-ms"]) >= 1


# ------------------------------------------------------------------ admission, by itself
def _admission(max_queue_size: int, instances: int = 1) -> Admission:
    config = BatchConfig(max_queue_size=max_queue_size, instances=instances, queue_timeout_s=0.1)
    return Admission("m", config)


def test_admission_size_bound_and_warm_up() -> None:
    a = _admission(max_queue_size=4)
    assert a.check(3) is None and a.check(4) == "queue_full"
    a.observe(1.0, 1)
    a.observe(1.0, 1)
    assert a.rate is None and a.check(3) is None  # not trusted before 3 batches
    a.observe(1.0, 1)
    assert a.rate == pytest.approx(1.0)
    assert a.check(0) is None and a.check(1) == "deadline"  # 1 s wait > 100 ms


def test_admission_deadline_uses_drain_rate_instances_and_request_timeout() -> None:
    a = _admission(max_queue_size=1000, instances=2)
    for _ in range(3):
        a.observe(0.004, 4)  # each worker serves a request per millisecond
    assert a.rate == pytest.approx(2000.0)
    assert a.check(200) is None  # 100 ms: exactly the queue timeout
    assert a.check(202) == "deadline"
    assert a.check(100, timeout_s=0.01) == "deadline"  # the request asked for 10 ms
    assert a.check(100, timeout_s=1.0) is None  # a longer request timeout does not count
    a.observe(0.0, 3)  # nonsense samples are ignored
    a.observe(1.0, 0)
    assert a.rate == pytest.approx(2000.0)


def test_retry_after_is_drain_time_capped_by_queue_timeout() -> None:
    a = _admission(max_queue_size=1000)
    assert a.retry_after_s(10) == pytest.approx(0.1)  # nothing measured: the queue timeout
    for _ in range(3):
        a.observe(0.001, 1)
    assert a.retry_after_s(0) == MIN_RETRY_AFTER_S
    assert a.retry_after_s(20) == pytest.approx(0.02)
    assert a.retry_after_s(500) == pytest.approx(0.1)  # by then every queued request is done
    err = a.refusal("queue_full", 1000)
    assert err.retry_after_s is not None and 0.1 >= err.retry_after_s >= a.retry_after_s(0)
    assert "retry in" in str(err)


def test_retry_headers() -> None:
    assert retry_headers(0.0015) == {"retry-after": "1", "retry-after-ms": "2"}
    assert retry_headers(2.5) == {"retry-after": "3", "retry-after-ms": "2500"}


# ------------------------------------------------------------------ reading the model name
def test_peek_model_reads_only_the_leading_fields() -> None:
    msg = gc.pb.ModelInferRequest(model_name="digits", model_version="12", id="r1")
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(X.tobytes())
    raw = msg.SerializeToString()
    assert peek_model(raw) == ("digits", "12")
    assert peek_model(gc.pb.ModelInferRequest(model_name="m").SerializeToString()) == ("m", "")
    assert peek_model(GARBAGE_FOR_M) == ("m", "")
    assert peek_model(b"\x12\x011\x0a\x01m") == ("m", "1")  # either order
    long_name = "n" * 200  # a two-byte length
    assert peek_model(gc.pb.ModelInferRequest(model_name=long_name).SerializeToString()) == (
        long_name,
        "",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        gc.pb.ModelInferRequest(id="only an id").SerializeToString(),
        b"\x12\x011",  # a version but no name
        b"\x0a\x05ab",  # truncated
        b"\x0a\x02\xff\xfe",  # not UTF-8
        b"\x0a\xff\xff\xff\xff\xff\xff",  # runaway length
    ],
)
def test_peek_model_gives_up_on_anything_else(raw: bytes) -> None:
    assert peek_model(raw) is None
