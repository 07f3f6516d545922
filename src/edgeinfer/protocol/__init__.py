"""The Open Inference Protocol (KServe V2) on the wire, shared by server and client.

* :mod:`~edgeinfer.protocol.types`: requests, responses and metadata as Python objects
  holding numpy arrays (:class:`InferenceRequest`, :class:`InferenceResponse`, ...).
* :mod:`~edgeinfer.protocol.rest`: JSON bodies with Triton's binary tensor data extension;
  ``encode_request``/``decode_request``/``encode_response``/``decode_response``.
* :mod:`~edgeinfer.protocol.grpc_codec`: the same objects <-> ``inference.*`` protobuf
  messages (``request_to_proto`` ... ``response_from_proto``); stubs in ``protocol.pb``.
* :mod:`~edgeinfer.protocol.limits`: what an untrusted message may ask for.

Every decoder raises :class:`ProtocolError` (an ``InputError``) for a malformed message.

>>> from edgeinfer.protocol import InferenceRequest, InferTensor, rest
>>> req = InferenceRequest([InferTensor.from_array("x", np.ones((1, 4), np.float32))])
>>> enc = rest.encode_request(req)            # binary tensor data by default
>>> rest.decode_request(enc.body, enc.header_length).inputs[0].shape
(1, 4)
"""

from __future__ import annotations

from edgeinfer.protocol import rest
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.limits import Limits
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
    "InferTensor",
    "InferenceRequest",
    "InferenceResponse",
    "Limits",
    "ModelMetadata",
    "Parameters",
    "ProtocolError",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
    "rest",
]
