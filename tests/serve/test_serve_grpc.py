"""gRPC against a real server on 127.0.0.1: tritonclient.grpc, typed contents, error codes."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.protocol import InferenceRequest, InferTensor, RequestedOutput
from edgeinfer.protocol import grpc_codec as gc
from edgeinfer.serve import BackgroundServer

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    with h.running(h.config(root)) as srv:
        yield srv


@pytest.fixture
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def _call(channel: grpc.Channel, method: str, response: object) -> object:
    return channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=response.FromString,  # type: ignore[attr-defined]
    )


def test_tritonclient_grpc(server: BackgroundServer) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
        meta = client.get_server_metadata()
        assert meta.name == "edgeinfer" and "binary_tensor_data" in meta.extensions
        mm = client.get_model_metadata("mlp", "2")
        assert list(mm.versions) == ["1", "2"] and list(mm.inputs[0].shape) == [-1, 4]
        inp = grpcclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        outs = [grpcclient.InferRequestedOutput("logits")]
        result = client.infer("mlp", [inp], model_version="1", outputs=outs, request_id="g1")
        np.testing.assert_allclose(result.as_numpy("logits"), X @ h.mlp_weights(0), rtol=1e-5)
        assert result.get_response().id == "g1" and result.as_numpy("probs") is None
        result = client.infer("mlp", [inp])
        np.testing.assert_allclose(result.as_numpy("logits"), X @ h.mlp_weights(1), rtol=1e-5)
        with pytest.raises(Exception, match="unknown model 'nope'"):
            client.infer("nope", [inp])
    finally:
        client.close()


@pytest.mark.parametrize("raw", [True, False])
def test_raw_and_typed_contents(channel: grpc.Channel, raw: bool) -> None:
    req = InferenceRequest(
        [InferTensor.from_array("x", X)],
        model_name="mlp",
        model_version="1",
        outputs=[RequestedOutput("probs")],
    )
    msg = _call(channel, "ModelInfer", gc.pb.ModelInferResponse)(gc.request_to_proto(req, raw=raw))
    resp = gc.response_from_proto(msg)
    assert resp.model_version == "1" and [t.name for t in resp.outputs] == ["probs"]
    assert len(msg.raw_output_contents) == 1  # type: ignore[attr-defined]
    np.testing.assert_allclose(resp.arrays()["probs"].sum(), 1.0, rtol=1e-5)


def test_infer_reports_server_timing_in_trailing_metadata(channel: grpc.Channel) -> None:
    from edgeinfer.offload.transport import parse_server_timing

    req = InferenceRequest([InferTensor.from_array("x", X)], model_name="mlp")
    call = _call(channel, "ModelInfer", gc.pb.ModelInferResponse)
    _, outcome = call.with_call(gc.request_to_proto(req, raw=True))  # type: ignore[attr-defined]
    timing = dict(outcome.trailing_metadata())["server-timing"]
    assert re.fullmatch(r"queue;dur=[0-9.]+, compute;dur=[0-9.]+", timing)
    seconds = parse_server_timing(timing)
    assert seconds is not None and 0 < seconds < 10


def _code(channel: grpc.Channel, method: str, payload: object) -> tuple[object, str]:
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, method, gc.pb.ModelInferResponse)(payload)
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"model_name": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ({"model_name": "../x"}, grpc.StatusCode.INVALID_ARGUMENT, "is not valid"),
        ({"model_name": "mlp", "model_version": "7"}, grpc.StatusCode.NOT_FOUND, "no version 7"),
        (
            {"model_name": "mlp", "shape": [1, 5]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "16 bytes of data, but shape \\[1,5\\] of FP32 needs 20",
        ),
        (
            {"model_name": "mlp", "name": "z"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "missing input\\(s\\) 'x'",
        ),
        ({"model_name": "mlp", "shape": [-1, 4]}, grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    ],
)
def test_error_codes(
    channel: grpc.Channel, request_fields: dict[str, object], code: object, message: str
) -> None:
    fields = dict(request_fields)
    msg = gc.pb.ModelInferRequest(
        model_name=fields.pop("model_name"), model_version=fields.pop("model_version", "")
    )
    msg.inputs.add(name=fields.pop("name", "x"), datatype="FP32", shape=fields.pop("shape", [1, 4]))
    msg.raw_input_contents.append(X.tobytes())
    got, details = _code(channel, "ModelInfer", msg)
    assert got == code
    assert re.search(message, details), details


def test_garbage_bytes_are_invalid_argument(channel: grpc.Channel) -> None:
    code, details = _code(channel, "ModelInfer", b"\xff\xff\xff\xff not protobuf")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest" in details
    # and the server is fine afterwards
    live = _call(channel, "ServerLive", gc.pb.ServerLiveResponse)(gc.pb.ServerLiveRequest())
    assert live.live  # type: ignore[attr-defined]


def test_model_ready_and_metadata_rpcs(channel: grpc.Channel) -> None:
    ready = _call(channel, "ModelReady", gc.pb.ModelReadyResponse)
    assert ready(gc.pb.ModelReadyRequest(name="fixed")).ready  # type: ignore[attr-defined]
    code, _ = _code(channel, "ModelReady", gc.pb.ModelReadyRequest(name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    meta = _call(channel, "ModelMetadata", gc.pb.ModelMetadataResponse)(
        gc.pb.ModelMetadataRequest(name="fixed")
    )
    md = gc.model_metadata_from_proto(meta)
    assert md.inputs[0].datatype == "INT64" and md.inputs[0].shape == (2, 3)


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    code, _ = _code(channel, "ModelStreamInfer", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/other.Service/ModelInfer")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_infer_calls_are_counted_once_each(server: BackgroundServer, channel: grpc.Channel) -> None:
    """Every ModelInfer that names a model is counted once with its status; a message that is
    not one names no model and is not counted."""
    registry = server.dataplane.metrics.registry

    def count(model: str, status: str) -> float:
        labels = {"model": model, "protocol": "grpc", "status": status}
        return registry.get_sample_value("edgeinfer_requests_total", labels) or 0.0

    before = {k: count(*k) for k in [("mlp", "200"), ("mlp", "400"), ("_unknown", "404")]}
    ok = gc.request_to_proto(InferenceRequest([InferTensor.from_array("x", X)], model_name="mlp"))
    _call(channel, "ModelInfer", gc.pb.ModelInferResponse)(ok)
    bad = gc.pb.ModelInferRequest(model_name="mlp")
    bad.inputs.add(name="x", datatype="FP32", shape=[1, 5])
    bad.raw_input_contents.append(X.tobytes())
    assert _code(channel, "ModelInfer", bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    unknown = gc.pb.ModelInferRequest(model_name="nope")
    assert _code(channel, "ModelInfer", unknown)[0] == grpc.StatusCode.NOT_FOUND
    total = sum(s.value for m in registry.collect() for s in m.samples if s.name.endswith("_total"))
    assert _code(channel, "ModelInfer", b"\xff\xff not protobuf")[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    after = {k: count(*k) for k in before}
    assert {k: after[k] - before[k] for k in before} == {
        ("mlp", "200"): 1.0,
        ("mlp", "400"): 1.0,
        ("_unknown", "404"): 1.0,
    }
    again = sum(s.value for m in registry.collect() for s in m.samples if s.name.endswith("_total"))
    assert again == total  # the garbage message moved no counter
