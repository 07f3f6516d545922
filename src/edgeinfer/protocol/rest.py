"""The REST codec: inference requests and responses as JSON, with binary tensor data.

Symmetric, and used by both sides::

    client                                   server
    encode_request(req) -> Encoded   --->    decode_request(body, header_length) -> req
    decode_response(body, header_length) <-- encode_response(resp, binary) -> Encoded

Triton's binary tensor data extension: the body is a JSON header followed by raw tensor
bytes; the ``Inference-Header-Content-Length`` HTTP header gives the JSON header's length.
A tensor sent as binary carries ``"parameters": {"binary_data_size": N}`` and no ``data``;
its bytes follow the header in the order of the tensors. A client asks for binary outputs
with ``binary_data: true`` on a requested output, or ``binary_data_output: true`` on the
request. ``Encoded.headers`` gives the HTTP headers to send with an encoded body.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from edgeinfer.protocol.arrays import (
    array_from_json,
    array_from_raw,
    array_to_json,
    array_to_raw,
    check_datatype,
)
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.limits import Limits, check_json_depth, element_count
from edgeinfer.protocol.types import (
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    Parameters,
    RequestedOutput,
)

__all__ = [
    "HEADER_LENGTH",
    "Encoded",
    "binary_outputs",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "parse_header_length",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Encoded:
    """An encoded body and, for binary bodies, the JSON header's length in bytes."""

    body: bytes
    header_length: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers that go with this body."""
        if self.header_length is None:
            return {"Content-Type": "application/json"}
        return {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(self.header_length),
        }


def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as an int (``None`` if absent)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise ProtocolError(
            f"{HEADER_LENGTH} must be a non-negative integer (bytes), got {value[:40]!r}"
        )
    return int(text)


# ---------------------------------------------------------------- encode
def _tensor_json(tensor: InferTensor, binary: bool, buffers: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": tensor.name,
        "shape": list(tensor.shape),
        "datatype": tensor.datatype,
    }
    params = dict(tensor.parameters)
    if binary:
        raw = array_to_raw(tensor.data, tensor.datatype)
        buffers.append(raw)
        params[BINARY_DATA_SIZE] = len(raw)
    else:
        params.pop(BINARY_DATA_SIZE, None)
        out["data"] = array_to_json(tensor.name, tensor.data, tensor.datatype)
    if params:
        out["parameters"] = params
    return out


def _finish(doc: dict[str, Any], buffers: list[bytes]) -> Encoded:
    try:  # tensor data spells NaN as "NaN"; a bare NaN token would not be JSON (RFC 8259)
        header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise ProtocolError(f"a parameter is not valid JSON: {exc}") from None
    if not buffers:
        return Encoded(header)
    return Encoded(b"".join([header, *buffers]), len(header))


def encode_request(request: InferenceRequest, *, binary: bool | Collection[str] = True) -> Encoded:
    """Encode a request; ``binary``: all inputs as binary data, none, or these names.

    The request's ``outputs``/``parameters`` go as they are: set ``binary_data`` on a
    :class:`RequestedOutput` (or ``binary_data_output`` on the request) to get binary
    outputs back.
    """
    buffers: list[bytes] = []
    doc: dict[str, Any] = {}
    if request.id is not None:
        doc["id"] = request.id
    if request.parameters:
        doc["parameters"] = dict(request.parameters)
    doc["inputs"] = [
        _tensor_json(t, binary if isinstance(binary, bool) else t.name in binary, buffers)
        for t in request.inputs
    ]
    if request.outputs is not None:
        doc["outputs"] = [
            {"name": o.name, **({"parameters": o.parameters} if o.parameters else {})}
            for o in request.outputs
        ]
    return _finish(doc, buffers)


def binary_outputs(request: InferenceRequest, names: Collection[str]) -> set[str]:
    """Which of the response's outputs ``names`` the request asked to get as binary data.

    A requested output's ``binary_data`` wins; otherwise the request's
    ``binary_data_output`` applies to every output.
    """
    default = request.parameters.get(BINARY_DATA_OUTPUT) is True
    chosen = {n for n in names} if default else set()
    for out in request.outputs or ():
        flag = out.binary
        if flag is True:
            chosen.add(out.name)
        elif flag is False:
            chosen.discard(out.name)
    return chosen & set(names)


def encode_response(
    response: InferenceResponse, *, binary: bool | Collection[str] = False
) -> Encoded:
    """Encode a response; ``binary``: all outputs as binary data, none, or these names."""
    buffers: list[bytes] = []
    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        doc["model_version"] = response.model_version
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    doc["outputs"] = [
        _tensor_json(t, binary if isinstance(binary, bool) else t.name in binary, buffers)
        for t in response.outputs
    ]
    return _finish(doc, buffers)


# ---------------------------------------------------------------- decode
def _split(body: bytes, header_length: int | None, limits: Limits) -> tuple[Any, memoryview]:
    if len(body) > limits.max_body_bytes:
        raise ProtocolError(
            f"body is {len(body)} bytes, more than the limit of {limits.max_body_bytes} bytes"
        )
    if header_length is None:
        header, rest = body, memoryview(b"")
    elif header_length > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes"
        )
    else:
        header, rest = body[:header_length], memoryview(body)[header_length:]  # no copy
    check_json_depth(header, limits.max_json_depth)
    try:
        doc = json.loads(header)
    except RecursionError:
        raise ProtocolError("JSON nests too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        where = "JSON header" if header_length is not None else "body"
        raise ProtocolError(f"the {where} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"expected a JSON object, got a JSON {type(doc).__name__}")
    return doc, rest


def _parameters(value: Any, where: str) -> Parameters:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object")
    return value


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _tensors(
    items: Any, rest: memoryview, has_binary: bool, limits: Limits, what: str
) -> list[InferTensor]:
    if not isinstance(items, list):
        raise ProtocolError(f"'{what}' must be a list of tensors")
    if len(items) > limits.max_tensors:
        raise ProtocolError(f"{len(items)} {what}, more than the limit of {limits.max_tensors}")
    tensors: list[InferTensor] = []
    seen: set[str] = set()
    offset = 0
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"{what}[{i}] must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{what}[{i}]: 'name' must be a non-empty string")
        if name in seen:
            raise ProtocolError(f"tensor {name!r} appears twice in '{what}'")
        seen.add(name)
        datatype, shape = item.get("datatype"), item.get("shape")
        dt = check_datatype(name, datatype)
        params = dict(_parameters(item.get("parameters"), f"tensor {name!r}"))
        size = params.pop(BINARY_DATA_SIZE, None)
        if size is not None:
            if not has_binary:
                raise ProtocolError(
                    f"tensor {name!r} has '{BINARY_DATA_SIZE}' but the message has no "
                    f"{HEADER_LENGTH} header, so there is no binary data"
                )
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(
                    f"tensor {name!r}: '{BINARY_DATA_SIZE}' must be an integer >= 0"
                )
            if "data" in item:
                raise ProtocolError(
                    f"tensor {name!r} has both 'data' and '{BINARY_DATA_SIZE}'; send one"
                )
            element_count(name, shape, dt.oip, limits)  # shape checks before slicing
            if offset + size > len(rest):
                raise ProtocolError(
                    f"tensor {name!r}: '{BINARY_DATA_SIZE}' is {size} bytes but only "
                    f"{len(rest) - offset} bytes of binary data remain"
                )
            data = array_from_raw(name, rest[offset : offset + size], datatype, shape, limits)
            offset += size
        elif "data" in item:
            data = array_from_json(name, item["data"], datatype, shape, limits)
        else:
            raise ProtocolError(
                f"tensor {name!r} has neither 'data' nor a '{BINARY_DATA_SIZE}' parameter"
            )
        tensors.append(InferTensor(name, dt.oip, data, params))
    if offset != len(rest):
        raise ProtocolError(
            f"{len(rest) - offset} bytes of binary data after the JSON header are not "
            "claimed by any tensor's 'binary_data_size'"
        )
    return tensors


def decode_request(
    body: bytes, header_length: int | None = None, limits: Limits = _DEFAULT_LIMITS
) -> InferenceRequest:
    """Decode a REST inference request body (the model name comes from the URL)."""
    doc, rest = _split(body, header_length, limits)
    if "inputs" not in doc:
        raise ProtocolError("the request has no 'inputs'; expected a list of input tensors")
    inputs = _tensors(doc["inputs"], rest, header_length is not None, limits, "inputs")
    outputs = None
    if doc.get("outputs") is not None:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list of {'name': ...} objects")
        if len(raw_outputs) > limits.max_tensors:
            raise ProtocolError(f"{len(raw_outputs)} outputs requested, more than the limit")
        outputs = []
        for i, o in enumerate(raw_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
            params = _parameters(o.get("parameters"), f"output {o['name']!r}")
            outputs.append(RequestedOutput(o["name"], params))
    return InferenceRequest(
        inputs=inputs,
        outputs=outputs,
        id=_optional_str(doc, "id"),
        parameters=_parameters(doc.get("parameters"), "request"),
    )


def decode_response(
    body: bytes, header_length: int | None = None, limits: Limits = _DEFAULT_LIMITS
) -> InferenceResponse:
    """Decode a REST inference response body (as a client does)."""
    doc, rest = _split(body, header_length, limits)
    if "error" in doc and "outputs" not in doc:
        raise ProtocolError(f"the server answered with an error: {doc['error']}")
    name = doc.get("model_name")
    if not isinstance(name, str):
        raise ProtocolError("the response has no string 'model_name'")
    version = doc.get("model_version")
    return InferenceResponse(
        model_name=name,
        outputs=_tensors(
            doc.get("outputs", []), rest, header_length is not None, limits, "outputs"
        ),
        model_version=None if version is None else str(version),
        id=_optional_str(doc, "id"),
        parameters=_parameters(doc.get("parameters"), "response"),
    )
