"""Open Inference Protocol messages as plain Python objects holding numpy arrays.

These are what the codecs (:mod:`edgeinfer.protocol.rest`, :mod:`edgeinfer.protocol.grpc`)
decode wire messages into and encode from, on both sides: the server's dataplane works on
them and so does the client. They carry no transport details: which tensors travel as
binary data is the codec's business (binary tensor data extension, raw gRPC contents).

Parameter values are what the protocol allows (``str``, ``int``, ``float``, ``bool``);
a JSON message may carry other JSON values, which are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.tensors import dtype_from_numpy

__all__ = [
    "BINARY_DATA",
    "BINARY_DATA_OUTPUT",
    "BINARY_DATA_SIZE",
    "InferTensor",
    "InferenceRequest",
    "InferenceResponse",
    "ModelMetadata",
    "Parameters",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
]

Parameters = dict[str, Any]

# Triton's binary tensor data extension: a requested output's ``binary_data`` (bool), the
# request-wide ``binary_data_output`` (bool) and a tensor's ``binary_data_size`` (bytes).
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
BINARY_DATA_SIZE = "binary_data_size"


@dataclass
class InferTensor:
    """One input of a request or output of a response: name, OIP datatype and the array.

    ``data`` has the tensor's shape; BYTES tensors are object arrays of ``bytes``.

    >>> InferTensor.from_array("x", np.zeros((1, 4), np.float32)).datatype
    'FP32'
    """

    name: str
    datatype: str
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)

    @classmethod
    def from_array(
        cls, name: str, array: Any, parameters: Mapping[str, Any] | None = None
    ) -> InferTensor:
        """A tensor from an array-like; the datatype follows the numpy dtype."""
        arr = np.asarray(array)
        try:
            dt = dtype_from_numpy(arr.dtype)
        except ValueError as exc:
            raise ProtocolError(f"tensor {name!r}: {exc}") from None
        if dt.name == "bytes" and arr.dtype != object:
            arr = np.vectorize(_to_bytes, otypes=[object])(arr) if arr.size else arr.astype(object)
        return cls(name, dt.oip, arr, dict(parameters or {}))


def _to_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


@dataclass
class RequestedOutput:
    """An output asked for by name; ``parameters`` may hold ``binary_data``."""

    name: str
    parameters: Parameters = field(default_factory=dict)

    @property
    def binary(self) -> bool | None:
        """``binary_data`` if the request says (REST only), else ``None``."""
        value = self.parameters.get(BINARY_DATA)
        return value if isinstance(value, bool) else None


@dataclass
class InferenceRequest:
    """An inference request. ``outputs=None`` asks for every output of the model.

    ``model_name``/``model_version`` travel in the message on gRPC and in the URL on REST
    (the REST codec leaves them empty; the caller fills them from the path).
    """

    inputs: list[InferTensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""

    def arrays(self) -> dict[str, np.ndarray]:
        """Input name -> array."""
        return {t.name: t.data for t in self.inputs}

    @property
    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]


@dataclass
class InferenceResponse:
    """An inference response: the model that answered and its output tensors."""

    model_name: str
    outputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """Output name -> array."""
        return {t.name: t.data for t in self.outputs}


@dataclass(frozen=True)
class TensorMetadata:
    """Name, OIP datatype and shape of a model input or output; -1 marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Any) -> TensorMetadata:
        if not isinstance(data, dict):
            raise ProtocolError(f"tensor metadata must be an object, got {type(data).__name__}")
        name, datatype, shape = data.get("name"), data.get("datatype"), data.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise ProtocolError(f"tensor metadata needs string 'name' and 'datatype': {data!r}")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise ProtocolError(f"tensor metadata {name!r}: 'shape' must be a list of integers")
        return cls(name, datatype, tuple(shape))


@dataclass(frozen=True)
class ModelMetadata:
    """What the model metadata endpoint says about a model."""

    name: str
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    versions: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        if self.properties:
            out["properties"] = dict(self.properties)
        return out

    @classmethod
    def from_json(cls, data: Any) -> ModelMetadata:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ProtocolError("model metadata must be an object with a string 'name'")
        props = data.get("properties") or {}
        return cls(
            name=data["name"],
            platform=str(data.get("platform", "")),
            inputs=tuple(TensorMetadata.from_json(t) for t in _list(data, "inputs")),
            outputs=tuple(TensorMetadata.from_json(t) for t in _list(data, "outputs")),
            versions=tuple(str(v) for v in _list(data, "versions")),
            properties={str(k): str(v) for k, v in dict(props).items()},
        )


@dataclass(frozen=True)
class ServerMetadata:
    """What the server metadata endpoint says about the server."""

    name: str
    version: str
    extensions: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}

    @classmethod
    def from_json(cls, data: Any) -> ServerMetadata:
        if not isinstance(data, dict):
            raise ProtocolError("server metadata must be a JSON object")
        return cls(
            str(data.get("name", "")),
            str(data.get("version", "")),
            tuple(str(e) for e in _list(data, "extensions")),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(data: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProtocolError(f"'{key}' must be a list, got {type(value).__name__}")
    return value
