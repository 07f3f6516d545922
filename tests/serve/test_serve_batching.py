"""Dynamic batching and backpressure, on a real server and on the batcher itself."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import serve_helpers as h
from onnx import TensorProto, helper

import edgeinfer
from edgeinfer.protocol import grpc_codec as gc
from edgeinfer.serve import BatchConfig
from edgeinfer.serve.batching import Batcher, batchable
from edgeinfer.serve.errors import QueueFull
from edgeinfer.serve.metrics import Metrics


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _burst(url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v2/models/m/infer", json=b) for b in bodies))


def test_requests_are_coalesced(tmp_path: Path) -> None:
    h.mlp(tmp_path / "m" / "1" / "model.onnx")
    batching = BatchConfig(max_batch_size=8, max_queue_delay_us=300_000, instances=1)
    xs = [np.full((1, 4), i, np.float32) for i in range(8)]
    with h.running(h.config(tmp_path, batching=batching, grpc_port=None)) as srv:
        responses = asyncio.run(_burst(srv.url, [h.infer_body(x) for x in xs]))
        metrics = httpx.get(srv.url + "/metrics").text
    w = h.mlp_weights(0)
    for x, r in zip(xs, responses, strict=True):
        assert r.status_code == 200, r.text
        logits = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 3)
        np.testing.assert_allclose(logits, x @ w, rtol=1e-5)  # each got its own rows back
    runs = _metric(metrics, "edgeinfer_batch_size_count", model="m")
    rows = _metric(metrics, "edgeinfer_batch_size_sum", model="m")
    assert rows == 8 and runs < 8, metrics  # 8 rows in fewer than 8 model runs


@pytest.fixture
def slow_repo(tmp_path: Path) -> Path:
    h.slow(tmp_path / "m" / "1" / "model.onnx", layers=150)
    return tmp_path


def test_full_queue_is_refused_at_once(slow_repo: Path) -> None:
    batching = BatchConfig(max_batch_size=1, max_queue_size=1, instances=1, queue_timeout_s=60)
    body = h.infer_body(np.ones((1, 4), np.float32))
    with h.running(h.config(slow_repo, batching=batching)) as srv:
        responses = asyncio.run(_burst(srv.url, [body] * 16))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses
        refused = [r.json()["error"] for r in responses if r.status_code == 503]
        assert refused and all(
            re.search("overloaded: its queue holds 1 requests", e) for e in refused
        )
        metrics = httpx.get(srv.url + "/metrics").text
        assert _metric(
            metrics, "edgeinfer_rejections_total", model="m", reason="queue_full"
        ) == len(refused)
        assert _metric(metrics, "edgeinfer_requests_total", model="m", status="503") == len(refused)
        # gRPC answers UNAVAILABLE with the same message
        msg = gc.pb.ModelInferRequest(model_name="m")
        msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        msg.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        with grpc.insecure_channel(srv.grpc_target) as ch:
            infer = ch.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=gc.pb.ModelInferResponse.FromString,
            )
            futures = [infer.future(msg) for _ in range(16)]
            codes = []
            for f in futures:
                try:
                    f.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    assert "overloaded" in exc.details()
        assert grpc.StatusCode.UNAVAILABLE in codes and grpc.StatusCode.OK in codes
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200


def test_queue_timeout(slow_repo: Path) -> None:
    batching = BatchConfig(max_batch_size=1, max_queue_size=32, instances=1, queue_timeout_s=0.005)
    body = h.infer_body(np.ones((1, 4), np.float32))
    with h.running(h.config(slow_repo, batching=batching, grpc_port=None)) as srv:
        responses = asyncio.run(_burst(srv.url, [body] * 6))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        for r in responses:
            if r.status_code == 503:
                assert "queue timeout" in r.json()["error"]
        metrics = httpx.get(srv.url + "/metrics").text
        assert _metric(metrics, "edgeinfer_rejections_total", reason="queue_timeout") >= 1


def test_request_timeout_parameter(slow_repo: Path) -> None:
    """A request's ``timeout`` parameter (microseconds, as Triton's) caps its queue wait."""
    batching = BatchConfig(max_batch_size=1, instances=1, queue_timeout_s=60)
    body = h.infer_body(np.ones((1, 4), np.float32), parameters={"timeout": 1000})
    with h.running(h.config(slow_repo, batching=batching, grpc_port=None)) as srv:
        responses = asyncio.run(_burst(srv.url, [body] * 6))
        assert 503 in [r.status_code for r in responses]


# ------------------------------------------------------------------ the batcher itself
def _seq_model(path: Path) -> Path:
    """ids: int64 [batch, seq] -> out: float32 [batch, seq] = ids * 2."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "ids"], ["s"]),
            helper.make_node("Cast", ["s"], ["out"], to=TensorProto.FLOAT),
        ],
        "seq",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])],
    )
    return h._save(graph, path)


def test_batcher_groups_compatible_requests_only(tmp_path: Path) -> None:
    model = edgeinfer.load(_seq_model(tmp_path / "seq.onnx"), threads=1)
    assert batchable(model)
    metrics = Metrics()
    config = BatchConfig(max_batch_size=4, max_queue_delay_us=100_000)

    async def main() -> list[tuple[dict[str, np.ndarray], object]]:
        batcher = Batcher(model, "seq", config, metrics)
        shapes = [(1, 3), (2, 3), (1, 5), (1, 3), (1, 5), (3, 3)]
        feeds = [
            {"ids": np.arange(r * c, dtype=np.int64).reshape(r, c) + k}
            for k, (r, c) in enumerate(shapes)
        ]
        results = await asyncio.gather(*(batcher.infer(f) for f in feeds))
        await batcher.close()
        for f, (out, _) in zip(feeds, results, strict=True):
            np.testing.assert_array_equal(out["out"], f["ids"] * 2)
        return results

    results = asyncio.run(main())
    assert all(t.batch_rows <= 4 for _, t in results)  # type: ignore[attr-defined]
    assert any(t.batch_rows > 1 for _, t in results)  # type: ignore[attr-defined]
    model.close()


def test_batcher_refuses_when_full_and_not_batchable(tmp_path: Path) -> None:
    model = edgeinfer.load(h.fixed(tmp_path / "f.onnx"), threads=1)
    assert not batchable(model)

    async def main() -> None:
        batcher = Batcher(model, "f", BatchConfig(max_queue_size=1), Metrics())
        feeds = {"a": np.ones((2, 3), np.int64)}
        results = await asyncio.gather(
            *(batcher.infer(feeds) for _ in range(5)), return_exceptions=True
        )
        await batcher.close()
        assert any(isinstance(r, QueueFull) for r in results)
        assert any(isinstance(r, tuple) for r in results)

    asyncio.run(main())
    model.close()


def _threads_of_runs(
    model: edgeinfer.Model, config: BatchConfig, feeds: list[dict[str, np.ndarray]]
) -> list[str]:
    """The names of the threads each model run of ``feeds`` (one request at a time) ran on."""
    seen: list[str] = []
    predict = model.predict

    def recording(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        seen.append(threading.current_thread().name)
        return predict(*args, **kwargs)  # type: ignore[arg-type]

    model.predict = recording  # type: ignore[method-assign]

    async def main() -> None:
        batcher = Batcher(model, "m", config, Metrics())
        for f in feeds:
            out, _ = await batcher.infer(f)
            np.testing.assert_array_equal(
                out[model.outputs[0].name], predict(f)[model.outputs[0].name]
            )
        await batcher.close()

    asyncio.run(main())
    return seen


def test_fast_model_runs_on_the_event_loop(tmp_path: Path) -> None:
    """A model that runs in less than inline_compute_us skips the hand-off to its thread after
    its first run; with 0 it always runs on the thread."""
    model = edgeinfer.load(h.mlp(tmp_path / "m.onnx"), threads=1)
    feeds = [{"x": np.full((1, 4), i, np.float32)} for i in range(6)]
    # 10 ms: far above what this model takes even on a busy machine (~20 us alone)
    on = _threads_of_runs(model, BatchConfig(inline_compute_us=10_000), feeds)
    assert on[0].startswith("infer-m") and on[1:] == ["MainThread"] * 5, on
    off = _threads_of_runs(model, BatchConfig(inline_compute_us=0), feeds)
    assert all(t.startswith("infer-m") for t in off), off
    model.close()


def test_model_with_unbounded_inputs_never_runs_on_the_event_loop(tmp_path: Path) -> None:
    """A dynamic dimension besides the batch: a client could make a run as long as it likes."""
    model = edgeinfer.load(_seq_model(tmp_path / "seq.onnx"), threads=1)
    feeds = [{"ids": np.arange(3, dtype=np.int64).reshape(1, 3)} for _ in range(4)]
    threads = _threads_of_runs(model, BatchConfig(inline_compute_us=1_000_000), feeds)
    assert all(t.startswith("infer-m") for t in threads), threads
    model.close()


def test_slow_model_stays_on_its_thread(tmp_path: Path) -> None:
    model = edgeinfer.load(h.slow(tmp_path / "s.onnx", layers=20, width=256), threads=1)
    feeds = [{"x": np.ones((1, 4), np.float32)} for _ in range(3)]
    threads = _threads_of_runs(model, BatchConfig(inline_compute_us=1), feeds)
    assert all(t.startswith("infer-m") for t in threads), threads
    model.close()


def test_lone_request_of_a_fast_model_runs_at_once(tmp_path: Path) -> None:
    """Nothing queued, nothing running: a fast model's request runs in its own task, without
    the queue, and is measured like any other (a batch of its own, no time queued)."""
    model = edgeinfer.load(h.mlp(tmp_path / "m.onnx"), threads=1)
    metrics = Metrics()
    xs = [np.full((1, 4), i, np.float32) for i in range(5)]

    async def main() -> list[object]:
        batcher = Batcher(model, "m", BatchConfig(inline_compute_us=10_000), metrics)
        timings = []
        for x in xs:
            out, timing = await batcher.infer({"x": x})
            np.testing.assert_allclose(out["logits"], x @ h.mlp_weights(0), rtol=1e-5)
            timings.append(timing)
            await asyncio.sleep(0)  # the next request comes in a later turn of the loop
        assert batcher.queue_depth == 0
        await batcher.close()
        return timings

    timings = asyncio.run(main())
    assert all(t.queue_s == 0.0 and t.batch_rows == 1 for t in timings[1:]), timings  # type: ignore[attr-defined]
    text = metrics.render()[0].decode()
    assert _metric(text, "edgeinfer_batch_size_count", model="m") == 5, text
    assert _metric(text, "edgeinfer_queue_duration_seconds_count", model="m") == 5, text
    model.close()


def test_requests_in_one_turn_of_the_loop_still_batch(tmp_path: Path) -> None:
    """Only one request a turn runs at once: those arriving with it queue and batch."""
    model = edgeinfer.load(h.mlp(tmp_path / "m.onnx"), threads=1)
    xs = [np.full((1, 4), i, np.float32) for i in range(3)]

    async def main() -> list[object]:
        batcher = Batcher(model, "m", BatchConfig(inline_compute_us=10_000), Metrics())
        for _ in range(3):  # warm: the model is known to be fast
            await batcher.infer({"x": xs[0]})
            await asyncio.sleep(0)
        results = await asyncio.gather(*(batcher.infer({"x": x}) for x in xs))
        await batcher.close()
        for x, (out, _) in zip(xs, results, strict=True):
            np.testing.assert_allclose(out["logits"], x @ h.mlp_weights(0), rtol=1e-5)
        return [t for _, t in results]

    timings = asyncio.run(main())
    assert sorted(t.batch_rows for t in timings) == [1, 2, 2], timings  # type: ignore[attr-defined]
    model.close()
