"""The gRPC codec: protocol objects <-> ``inference.*`` protobuf messages, both sides.

Symmetric, and used by both sides::

    client                                        server
    request_to_proto(req) -> ModelInferRequest    request_from_proto(msg) -> req
    response_from_proto(msg) -> resp              response_to_proto(resp) -> ModelInferResponse

Tensor data travels as ``raw_input_contents`` / ``raw_output_contents`` (``raw=True``, the
default and what Triton's clients send) or in the typed ``contents`` fields (``raw=False``;
FP16 always travels raw, as the protocol requires). Decoders accept either and check that the
data agrees with each tensor's shape and datatype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeinfer.protocol.arrays import array_from_raw, array_to_raw, check_datatype
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.limits import Limits, element_count
from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb
from edgeinfer.protocol.types import (
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    ServerMetadata,
    TensorMetadata,
)

__all__ = [
    "model_metadata_from_proto",
    "model_metadata_to_proto",
    "parameters_from_proto",
    "parameters_to_proto",
    "pb",
    "request_from_proto",
    "request_to_proto",
    "response_from_proto",
    "response_to_proto",
    "server_metadata_from_proto",
    "server_metadata_to_proto",
]

_DEFAULT_LIMITS = Limits()
_INT64_MAX = (1 << 63) - 1

# OIP datatype -> the InferTensorContents field that carries it.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# ---------------------------------------------------------------- parameters
def parameters_to_proto(params: Mapping[str, Any], target: Any) -> None:
    """Copy ``params`` into a protobuf ``map<string, InferParameter>`` field.

    Values that are not str/int/float/bool (JSON-only extras) are sent as JSON-ish text.
    """
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value if isinstance(value, str) else str(value)


def parameters_from_proto(source: Any) -> Parameters:
    """A protobuf ``map<string, InferParameter>`` as a plain dict."""
    out: Parameters = {}
    for key, p in source.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(p, which)
    return out


# ---------------------------------------------------------------- tensors
def _put_contents(tensor_msg: Any, tensor: InferTensor) -> None:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:  # FP16 has no typed field
        raise ProtocolError(f"tensor {tensor.name!r}: {tensor.datatype} must travel raw")
    flat = tensor.data.reshape(-1)
    values = (
        [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat]
        if tensor.datatype == "BYTES"
        else flat.tolist()
    )
    getattr(tensor_msg.contents, field).extend(values)


def _read_tensor(
    name: str, datatype: str, shape: Any, contents: Any, raw: bytes | None, limits: Limits
) -> InferTensor:
    dt = check_datatype(name, datatype)
    dims, count = element_count(name, list(shape), dt.oip, limits)
    if raw is not None:
        return InferTensor(name, dt.oip, array_from_raw(name, raw, dt.oip, dims, limits))
    field = _CONTENTS.get(dt.oip)
    filled = [f.name for f, _ in contents.ListFields()]
    if field is None or any(f != field for f in filled):
        expected = f"'contents.{field}'" if field else "raw contents"
        raise ProtocolError(
            f"tensor {name!r}: {dt.oip} data must come in {expected}, got "
            f"{', '.join(filled) or 'no data'}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise ProtocolError(
            f"tensor {name!r}: {len(values)} values in contents.{field}, but shape "
            f"{list(dims)} needs {count}"
        )
    if dt.oip == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
    else:
        arr = np.asarray(values, dtype=dt.numpy) if count else np.empty(0, dt.numpy)
        if dt.numpy.kind in "iu" and count:
            # int_contents/uint_contents are 32-bit: check the value fits the narrower type
            wide = np.asarray(values)
            info = np.iinfo(dt.numpy)
            if wide.min() < info.min or wide.max() > info.max:
                raise ProtocolError(f"tensor {name!r}: values do not fit {dt.oip}")
    return InferTensor(name, dt.oip, arr.reshape(dims))


def _check_raw(n_raw: int, n_tensors: int, what: str) -> None:
    if n_raw and n_raw != n_tensors:
        raise ProtocolError(
            f"{n_raw} entries in raw_{what}_contents for {n_tensors} tensors; "
            "there must be one per tensor, in order"
        )


# ---------------------------------------------------------------- requests
def request_to_proto(request: InferenceRequest, *, raw: bool = True) -> Any:
    """An :class:`InferenceRequest` as ``inference.ModelInferRequest``."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id or "",
    )
    parameters_to_proto(request.parameters, msg.parameters)
    for t in request.inputs:
        tm = msg.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        parameters_to_proto(t.parameters, tm.parameters)
        if not raw and t.datatype != "FP16":
            _put_contents(tm, t)
    if raw or any(t.datatype == "FP16" for t in request.inputs):
        if not raw:
            raise ProtocolError("FP16 inputs must travel raw; encode with raw=True")
        msg.raw_input_contents.extend(array_to_raw(t.data, t.datatype) for t in request.inputs)
    for o in request.outputs or ():
        om = msg.outputs.add(name=o.name)
        parameters_to_proto(o.parameters, om.parameters)
    return msg


def request_from_proto(msg: Any, limits: Limits = _DEFAULT_LIMITS) -> InferenceRequest:
    """Decode ``inference.ModelInferRequest``, checking every tensor against its shape."""
    if len(msg.inputs) > limits.max_tensors:
        raise ProtocolError(f"{len(msg.inputs)} inputs, more than the limit {limits.max_tensors}")
    raws = msg.raw_input_contents
    _check_raw(len(raws), len(msg.inputs), "input")
    inputs, seen = [], set()
    for i, t in enumerate(msg.inputs):
        if not t.name:
            raise ProtocolError(f"inputs[{i}] has no name")
        if t.name in seen:
            raise ProtocolError(f"tensor {t.name!r} appears twice in 'inputs'")
        seen.add(t.name)
        if raws and t.HasField("contents"):
            raise ProtocolError(
                f"tensor {t.name!r} has typed contents although raw_input_contents is used"
            )
        tensor = _read_tensor(
            t.name, t.datatype, t.shape, t.contents, raws[i] if raws else None, limits
        )
        tensor.parameters = parameters_from_proto(t.parameters)
        inputs.append(tensor)
    outputs = None
    if len(msg.outputs):
        outputs = [
            RequestedOutput(o.name, parameters_from_proto(o.parameters)) for o in msg.outputs
        ]
    return InferenceRequest(
        inputs=inputs,
        outputs=outputs,
        id=msg.id or None,
        parameters=parameters_from_proto(msg.parameters),
        model_name=msg.model_name,
        model_version=msg.model_version,
    )


# ---------------------------------------------------------------- responses
def response_to_proto(response: InferenceResponse, *, raw: bool = True) -> Any:
    """An :class:`InferenceResponse` as ``inference.ModelInferResponse``."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    parameters_to_proto(response.parameters, msg.parameters)
    raw = raw or any(t.datatype == "FP16" for t in response.outputs)
    for t in response.outputs:
        tm = msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        parameters_to_proto(t.parameters, tm.parameters)
        if not raw:
            _put_contents(tm, t)
    if raw:
        msg.raw_output_contents.extend(array_to_raw(t.data, t.datatype) for t in response.outputs)
    return msg


def response_from_proto(msg: Any, limits: Limits = _DEFAULT_LIMITS) -> InferenceResponse:
    """Decode ``inference.ModelInferResponse`` (as a client does)."""
    raws = msg.raw_output_contents
    _check_raw(len(raws), len(msg.outputs), "output")
    outputs = []
    for i, t in enumerate(msg.outputs):
        tensor = _read_tensor(
            t.name, t.datatype, t.shape, t.contents, raws[i] if raws else None, limits
        )
        tensor.parameters = parameters_from_proto(t.parameters)
        outputs.append(tensor)
    return InferenceResponse(
        model_name=msg.model_name,
        outputs=outputs,
        model_version=msg.model_version or None,
        id=msg.id or None,
        parameters=parameters_from_proto(msg.parameters),
    )


# ---------------------------------------------------------------- metadata
def model_metadata_to_proto(meta: ModelMetadata) -> Any:
    msg = pb.ModelMetadataResponse(
        name=meta.name, versions=list(meta.versions), platform=meta.platform
    )
    for src, dst in ((meta.inputs, msg.inputs), (meta.outputs, msg.outputs)):
        for t in src:
            dst.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    msg.properties.update(dict(meta.properties))
    return msg


def model_metadata_from_proto(msg: Any) -> ModelMetadata:
    def tensors(items: Any) -> tuple[TensorMetadata, ...]:
        return tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in items)

    return ModelMetadata(
        name=msg.name,
        platform=msg.platform,
        inputs=tensors(msg.inputs),
        outputs=tensors(msg.outputs),
        versions=tuple(msg.versions),
        properties=dict(msg.properties),
    )


def server_metadata_to_proto(meta: ServerMetadata) -> Any:
    return pb.ServerMetadataResponse(
        name=meta.name, version=meta.version, extensions=list(meta.extensions)
    )


def server_metadata_from_proto(msg: Any) -> ServerMetadata:
    return ServerMetadata(msg.name, msg.version, tuple(msg.extensions))
