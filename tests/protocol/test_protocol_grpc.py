"""The gRPC codec: round trips raw and typed, bad messages, and wire compatibility with
Triton's own ``inference.*`` messages (tritonclient's stubs load in the same process)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.protocol import (
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    ModelMetadata,
    ProtocolError,
    RequestedOutput,
    ServerMetadata,
    TensorMetadata,
)
from edgeinfer.protocol import grpc_codec as gc

ARRAYS = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "f64": np.array([0.1, -2.0]),
    "i8": np.array([[-3, 4]], dtype=np.int8),
    "i64": np.array([2**40], dtype=np.int64),
    "u32": np.array([7, 2**32 - 1], dtype=np.uint32),
    "u64": np.array([2**64 - 1], dtype=np.uint64),
    "bool": np.array([True, False]),
    "bytes": np.array([b"ab", b""], dtype=object),
}


def _wire(msg: object, cls: object) -> object:
    return cls.FromString(msg.SerializeToString())  # type: ignore[attr-defined]


@pytest.mark.parametrize("raw", [True, False])
def test_request_round_trip(raw: bool) -> None:
    req = InferenceRequest(
        [InferTensor.from_array(n, a) for n, a in ARRAYS.items()],
        outputs=[RequestedOutput("y", {"flag": True})],
        id="9",
        parameters={"b": True, "i": -3, "f": 0.5, "s": "x", "big": 2**64 - 1},
        model_name="m",
        model_version="2",
    )
    msg = _wire(gc.request_to_proto(req, raw=raw), gc.pb.ModelInferRequest)
    assert len(msg.raw_input_contents) == (len(ARRAYS) if raw else 0)  # type: ignore[attr-defined]
    dec = gc.request_from_proto(msg)
    assert (dec.model_name, dec.model_version, dec.id) == ("m", "2", "9")
    assert dec.parameters == req.parameters
    assert dec.outputs == [RequestedOutput("y", {"flag": True})]
    for t in dec.inputs:
        assert t.data.dtype == ARRAYS[t.name].dtype and t.data.tolist() == ARRAYS[t.name].tolist()


@pytest.mark.parametrize("raw", [True, False])
def test_response_round_trip(raw: bool) -> None:
    resp = InferenceResponse(
        "m", [InferTensor.from_array(n, a) for n, a in ARRAYS.items()], model_version="1", id="x"
    )
    dec = gc.response_from_proto(
        _wire(gc.response_to_proto(resp, raw=raw), gc.pb.ModelInferResponse)
    )
    assert (dec.model_name, dec.model_version, dec.id) == ("m", "1", "x")
    assert {t.name: t.data.tolist() for t in dec.outputs} == {
        n: a.tolist() for n, a in ARRAYS.items()
    }


def test_fp16_travels_raw_even_when_typed_is_asked() -> None:
    resp = InferenceResponse("m", [InferTensor.from_array("h", np.array([1.5], np.float16))])
    msg = gc.response_to_proto(resp, raw=False)
    assert len(msg.raw_output_contents) == 1
    req = InferenceRequest([InferTensor.from_array("h", np.array([1.5], np.float16))])
    with pytest.raises(ProtocolError, match="FP16 inputs must travel raw"):
        gc.request_to_proto(req, raw=False)


def _msg(**tensor: object) -> object:
    msg = gc.pb.ModelInferRequest(model_name="m")
    raw = tensor.pop("raw", None)
    t = msg.inputs.add(**{"name": "x", "datatype": "FP32", "shape": [2], **tensor})
    if raw is not None:
        msg.raw_input_contents.extend(raw)  # type: ignore[arg-type]
    return msg, t


def test_bad_requests() -> None:
    msg, _ = _msg(raw=[b"\0" * 4])
    with pytest.raises(ProtocolError, match="4 bytes of data, but shape \\[2\\] of FP32 needs 8"):
        gc.request_from_proto(msg)
    msg, _ = _msg(shape=[-2], raw=[b""])
    with pytest.raises(ProtocolError, match="dimension -2 is negative"):
        gc.request_from_proto(msg)
    msg, _ = _msg(shape=[2**31, 2**31], raw=[b""])
    with pytest.raises(ProtocolError, match="more than the limit"):
        gc.request_from_proto(msg)
    msg, t = _msg()
    t.contents.int64_contents.extend([1, 2])  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="must come in 'contents.fp32_contents'"):
        gc.request_from_proto(msg)
    msg, t = _msg()
    t.contents.fp32_contents.extend([1.0])  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="1 values in contents.fp32_contents"):
        gc.request_from_proto(msg)
    msg, t = _msg(datatype="UINT8")
    t.contents.uint_contents.extend([1, 256])  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="do not fit UINT8"):
        gc.request_from_proto(msg)
    msg, _ = _msg(raw=[b"\0" * 8, b"\0"])
    with pytest.raises(ProtocolError, match="2 entries in raw_input_contents for 1 tensors"):
        gc.request_from_proto(msg)
    msg, _ = _msg(datatype="FP128", raw=[b""])
    with pytest.raises(ProtocolError, match="unknown datatype"):
        gc.request_from_proto(msg)


def test_metadata_round_trip() -> None:
    meta = ModelMetadata(
        "m",
        "onnxruntime_onnx",
        (TensorMetadata("x", "FP32", (-1, 4)),),
        (TensorMetadata("y", "INT64", (-1,)),),
        ("1", "2"),
        {"k": "v"},
    )
    assert gc.model_metadata_from_proto(gc.model_metadata_to_proto(meta)) == meta
    server = ServerMetadata("edgeinfer", "1", ("binary_tensor_data",))
    assert gc.server_metadata_from_proto(gc.server_metadata_to_proto(server)) == server


def test_wire_compatible_with_triton_messages() -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    req = InferenceRequest(
        [InferTensor.from_array("x", ARRAYS["f32"])], model_name="m", parameters={"p": 3}
    )
    theirs = service_pb2.ModelInferRequest.FromString(gc.request_to_proto(req).SerializeToString())
    assert theirs.model_name == "m" and list(theirs.inputs[0].shape) == [2, 3]
    assert theirs.parameters["p"].int64_param == 3
    back = gc.request_from_proto(_wire(theirs, gc.pb.ModelInferRequest))
    assert np.array_equal(back.inputs[0].data, ARRAYS["f32"])
    assert gc.pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == (
        "inference.GRPCInferenceService"
    )
