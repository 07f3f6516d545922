"""The REST codec: round trips both ways, JSON and binary, and every malformed message."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgeinfer.protocol import (
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    Limits,
    ProtocolError,
    RequestedOutput,
    rest,
)
from edgeinfer.protocol.limits import check_json_depth

ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f16": np.array([[0.5, -1.25]], dtype=np.float16),
    "f64": np.array([1e-300, 2.5]),
    "i8": np.array([-128, 127], dtype=np.int8),
    "i64": np.array([[-(2**62), 2**62]], dtype=np.int64),
    "u16": np.array([0, 65535], dtype=np.uint16),
    "u64": np.array([2**63 + 5], dtype=np.uint64),
    "bool": np.array([[True, False, True]]),
    "bytes": np.array([b"hello", b"", "caf\u00e9".encode()], dtype=object),
}


def _request(**kw: object) -> InferenceRequest:
    return InferenceRequest(
        [InferTensor.from_array(n, a) for n, a in ARRAYS.items()],
        outputs=[RequestedOutput("y", {"binary_data": True})],
        id="req-1",
        parameters={"priority": 1, "tag": "a"},
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("binary", [True, False, ["f32", "bytes"]])
def test_request_round_trip(binary: object) -> None:
    enc = rest.encode_request(_request(), binary=binary)  # type: ignore[arg-type]
    if binary is False:
        assert enc.header_length is None
        assert enc.headers == {"Content-Type": "application/json"}
    else:
        assert enc.headers[rest.HEADER_LENGTH] == str(enc.header_length)
    dec = rest.decode_request(enc.body, enc.header_length)
    assert dec.id == "req-1" and dec.parameters == {"priority": 1, "tag": "a"}
    assert dec.outputs == [RequestedOutput("y", {"binary_data": True})]
    for t in dec.inputs:
        want = ARRAYS[t.name]
        assert t.data.shape == want.shape
        assert t.data.dtype == (object if want.dtype == object else want.dtype)
        assert t.data.tolist() == want.tolist()
        assert "binary_data_size" not in t.parameters


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip(binary: bool) -> None:
    resp = InferenceResponse(
        "m",
        [InferTensor.from_array(n, a) for n, a in ARRAYS.items()],
        model_version="3",
        id="7",
    )
    enc = rest.encode_response(resp, binary=binary)
    dec = rest.decode_response(enc.body, enc.header_length)
    assert (dec.model_name, dec.model_version, dec.id) == ("m", "3", "7")
    for t in dec.outputs:
        assert t.data.tolist() == ARRAYS[t.name].tolist()


def test_nested_and_flat_json_data_are_the_same() -> None:
    flat = {"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}
    nested = dict(flat, data=[[1, 2], [3, 4]])
    for tensor in (flat, nested):
        req = rest.decode_request(json.dumps({"inputs": [tensor]}).encode())
        assert req.inputs[0].data.tolist() == [[1, 2], [3, 4]]
        assert req.inputs[0].data.dtype == np.int32


def test_binary_outputs_choice() -> None:
    req = InferenceRequest(
        [], outputs=[RequestedOutput("a", {"binary_data": True}), RequestedOutput("b")]
    )
    assert rest.binary_outputs(req, ["a", "b"]) == {"a"}
    req = InferenceRequest(
        [],
        parameters={"binary_data_output": True},
        outputs=[RequestedOutput("b", {"binary_data": False})],
    )
    assert rest.binary_outputs(req, ["a", "b"]) == {"a"}
    assert rest.binary_outputs(InferenceRequest([]), ["a"]) == set()


def _body(*tensors: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


X = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}

BAD_JSON = [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b"{}", "has no 'inputs'"),
    (_body({**X, "shape": [3]}), "has 2 values, but shape \\[3\\] needs 3"),
    (_body({**X, "shape": [-1]}), "dimension -1 is negative"),
    (_body({**X, "shape": [2.5]}), "dimension 2.5 is not an integer"),
    (_body({**X, "shape": "2"}), "'shape' must be a list"),
    (_body({**X, "shape": [2**40, 2**40]}), "more than the limit"),
    (_body({**X, "shape": [1] * 17}), "17 dimensions, more than the limit 16"),
    (_body({**X, "datatype": "FP8"}), "unknown datatype 'FP8'"),
    (_body({**X, "datatype": 5}), "'datatype' must be a string"),
    (_body({**X, "data": [[1.0], [2.0, 3.0]]}), "not a regular array"),
    (_body({**X, "data": [[1.0, 2.0]]}), "nested as \\[1,2\\]"),
    (_body({**X, "data": ["a", "b"]}), "FP32 data must be numbers, got string"),
    (_body({**X, "data": [True, False]}), "FP32 data must be numbers, got boolean"),
    (_body({**X, "data": [{"a": 1}, 2]}), "must be numbers"),
    (_body({**X, "data": 5}), "'data' must be a JSON array"),
    (_body({**X, "datatype": "UINT8", "data": [1, 300]}), "do not fit UINT8"),
    (_body({**X, "datatype": "INT32", "data": [1.5, 2]}), "INT32 data must be integers"),
    (_body({**X, "datatype": "BYTES", "data": [1, 2]}), "BYTES data must be strings"),
    (_body({**X, "data": None}), "'data' must be a JSON array"),
    (_body({"name": "x", "shape": [1], "datatype": "FP32"}), "neither 'data' nor"),
    (_body({**X, "name": ""}), "'name' must be a non-empty string"),
    (_body(X, X), "appears twice"),
    (_body("x"), "must be a JSON object"),
    (_body(X, id=5), "'id' must be a string"),
    (_body(X, parameters=[1]), "'parameters' must be a JSON object"),
    (_body(X, outputs=[{"nam": "y"}]), "must be an object with a string 'name'"),
    (_body({**X, "parameters": {"binary_data_size": 8}}), "no Inference-Header-Content-Length"),
    (b"[" * 40 + b"]" * 40, "nesting is 40 levels deep"),
    (
        _body({**X, "data": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}),
        "nesting is 3[0-9] levels deep",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON)
def test_bad_json_requests(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        rest.decode_request(body)


def _binary(tensors: list[dict[str, object]], data: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": tensors}).encode()
    return header + data, len(header)


def _bin_tensor(size: int, shape: list[int], datatype: str = "FP32") -> dict[str, object]:
    return {
        "name": "x",
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


BAD_BINARY = [
    (
        _binary([_bin_tensor(4, [2])], b"\0" * 4),
        "4 bytes of data, but shape \\[2\\] of FP32 needs 8",
    ),
    (_binary([_bin_tensor(8, [2])], b"\0" * 4), "is 8 bytes but only 4 bytes"),
    (_binary([_bin_tensor(8, [2])], b"\0" * 12), "4 bytes of binary data .* not claimed"),
    (_binary([_bin_tensor(-1, [2])], b""), "must be an integer >= 0"),
    (_binary([_bin_tensor(8, [2**62])], b"\0" * 8), "more than the limit"),
    (_binary([{**_bin_tensor(8, [2]), "data": [1, 2]}], b"\0" * 8), "both 'data' and"),
    (
        _binary([_bin_tensor(6, [2], "BYTES")], struct.pack("<I", 2) + b"ab"),
        "6 bytes of BYTES data cannot hold 2 elements",
    ),
    (
        _binary([_bin_tensor(8, [2], "BYTES")], struct.pack("<I", 4) + b"abcd"),
        "ends after 1 of 2 elements",
    ),
    (  # 64M elements claimed by 4 bytes: refused before anything is allocated
        _binary([_bin_tensor(4, [1 << 26], "BYTES")], struct.pack("<I", 0)),
        "4 bytes of BYTES data cannot hold 67108864 elements",
    ),
    (_binary([_bin_tensor(0, [0, 2**62])], b""), "is empty, but its other dimensions"),
    (
        _binary([_bin_tensor(8, [1], "BYTES")], struct.pack("<I", 9) + b"abcd"),
        "claims 9 bytes but only 4 remain",
    ),
]


@pytest.mark.parametrize(("body_and_length", "message"), BAD_BINARY)
def test_bad_binary_requests(body_and_length: tuple[bytes, int], message: str) -> None:
    body, length = body_and_length
    with pytest.raises(ProtocolError, match=message):
        rest.decode_request(body, length)


def test_header_length_checks() -> None:
    with pytest.raises(ProtocolError, match="non-negative integer"):
        rest.parse_header_length("-3")
    with pytest.raises(ProtocolError, match="non-negative integer"):
        rest.parse_header_length("9" * 40)
    assert rest.parse_header_length(None) is None and rest.parse_header_length(" 12 ") == 12
    with pytest.raises(ProtocolError, match="body has only 2 bytes"):
        rest.decode_request(b"{}", 10)


def test_body_limit_in_decoder() -> None:
    with pytest.raises(ProtocolError, match="more than the limit of 10 bytes"):
        rest.decode_request(_body(X), None, Limits(max_body_bytes=10))


def test_json_depth_ignores_brackets_in_strings() -> None:
    text = json.dumps({"s": "[" * 100, "t": [']]]\\"[[['], "u": [[1]]}).encode()
    check_json_depth(text, 3)
    with pytest.raises(ProtocolError, match="3 levels deep"):
        check_json_depth(text, 2)


@pytest.mark.parametrize("pad", range(4))
def test_binary_data_at_any_alignment(pad: int) -> None:
    req = InferenceRequest([InferTensor.from_array("x", ARRAYS["f32"])], id="p" * pad)
    enc = rest.encode_request(req)
    arr = rest.decode_request(enc.body, enc.header_length).inputs[0].data
    assert arr.flags.aligned and np.array_equal(arr, ARRAYS["f32"])


def test_response_error_and_non_utf8_bytes() -> None:
    with pytest.raises(ProtocolError, match="answered with an error: boom"):
        rest.decode_response(b'{"error": "boom"}')
    resp = InferenceResponse("m", [InferTensor.from_array("b", np.array([b"\xff"], object))])
    with pytest.raises(ProtocolError, match="not UTF-8"):
        rest.encode_response(resp, binary=False)
    enc = rest.encode_response(resp, binary=True)
    assert rest.decode_response(enc.body, enc.header_length).outputs[0].data[0] == b"\xff"


def _strict_json(body: bytes) -> object:
    """``body`` parsed as RFC 8259 JSON: Python's own parser also takes NaN and Infinity."""

    def refuse(token: str) -> object:
        raise ValueError(f"{token} is not JSON")

    return json.loads(body, parse_constant=refuse)


def test_non_finite_floats_are_valid_json_and_round_trip() -> None:
    x = np.array([[1.5, np.nan, np.inf, -np.inf]], np.float32)
    resp = InferenceResponse("m", [InferTensor.from_array("y", x)])
    enc = rest.encode_response(resp, binary=False)
    doc = _strict_json(enc.body)
    assert doc["outputs"][0]["data"] == [1.5, "NaN", "Infinity", "-Infinity"]  # type: ignore[index]
    back = rest.decode_response(enc.body).outputs[0].data
    np.testing.assert_array_equal(back, x)  # NaN equals NaN here
    binary = rest.encode_response(resp, binary=True)
    raw = rest.decode_response(binary.body, binary.header_length).outputs[0].data
    assert raw.tobytes() == x.tobytes()  # bit for bit


@pytest.mark.parametrize(
    "data", [[1, "NaN", "Infinity", "-Infinity"], [[1, "NaN"], ["Infinity", "-Infinity"]]]
)
def test_json_requests_read_non_finite_strings_and_triton_tokens(data: list[object]) -> None:
    shape = [4] if not isinstance(data[0], list) else [2, 2]
    for body in (
        json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP64", "data": data}]}),
        '{"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", '
        '"data": [1, NaN, Infinity, -Infinity]}]}',  # as Triton writes them
    ):
        got = rest.decode_request(body.encode()).inputs[0].data.reshape(-1)
        np.testing.assert_array_equal(got, [1, np.nan, np.inf, -np.inf])


@pytest.mark.parametrize("value", ["nan", "inf", "1.5", None])
def test_other_values_in_float_data_are_refused(value: object) -> None:
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, value]}]}
    with pytest.raises(ProtocolError, match="FP32 data must be numbers"):
        rest.decode_request(json.dumps(body).encode())


def test_a_nan_parameter_is_refused_not_written_as_a_bare_token() -> None:
    req = InferenceRequest([InferTensor.from_array("x", np.ones(1))], parameters={"t": np.nan})
    with pytest.raises(ProtocolError, match="not valid JSON"):
        rest.encode_request(req)
