"""Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) with grpcio.

Tensors travel as ``raw_input_contents``/``raw_output_contents`` (``binary=True``, what
Triton's clients send) or in the typed ``contents`` fields (``binary=False``). Every
``grpc.StatusCode`` maps to one :class:`~edgeinfer.offload.errors.RemoteError` class in
:data:`GRPC_ERRORS`, the one table that knows them. The channel reconnects quickly after a
failure (100 ms .. 1 s backoff instead of grpc's default of up to two minutes), so a server
that comes back is used again within a second.
"""

from __future__ import annotations

import time
from typing import Any

import grpc  # type: ignore[import-untyped]

from edgeinfer.errors import InputError
from edgeinfer.offload.errors import (
    RemoteError,
    RemoteProtocolError,
    RemoteRefused,
    RemoteRejected,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
)
from edgeinfer.offload.transport import CallStats, parse_server_timing
from edgeinfer.protocol import grpc_codec
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.pb import open_inference_grpc_pb2_grpc as pb_grpc
from edgeinfer.protocol.types import InferenceRequest, InferenceResponse, ModelMetadata

__all__ = ["GRPC_ERRORS", "GrpcTransport", "grpc_target", "map_grpc_error"]

pb = grpc_codec.pb
_FRAMING = 64  # bytes of HTTP/2 frames and headers around one message (an estimate)
_MAX_MESSAGE = 64 << 20  # bytes, as the server's limit
_COMPRESSION = {
    None: None,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}

# grpc status -> (our class, the HTTP status it corresponds to)
GRPC_ERRORS: dict[grpc.StatusCode, tuple[type[RemoteError], int]] = {
    grpc.StatusCode.CANCELLED: (RemoteUnavailable, 499),
    grpc.StatusCode.UNKNOWN: (RemoteServerError, 500),
    grpc.StatusCode.INVALID_ARGUMENT: (RemoteRejected, 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: (RemoteTimeout, 504),
    grpc.StatusCode.NOT_FOUND: (RemoteRejected, 404),
    grpc.StatusCode.ALREADY_EXISTS: (RemoteRejected, 409),
    grpc.StatusCode.PERMISSION_DENIED: (RemoteRejected, 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (RemoteRejected, 429),
    grpc.StatusCode.FAILED_PRECONDITION: (RemoteRejected, 400),
    grpc.StatusCode.ABORTED: (RemoteUnavailable, 409),
    grpc.StatusCode.OUT_OF_RANGE: (RemoteRejected, 400),
    grpc.StatusCode.UNIMPLEMENTED: (RemoteRejected, 501),
    grpc.StatusCode.INTERNAL: (RemoteServerError, 500),
    grpc.StatusCode.UNAVAILABLE: (RemoteUnavailable, 503),
    grpc.StatusCode.DATA_LOSS: (RemoteServerError, 500),
    grpc.StatusCode.UNAUTHENTICATED: (RemoteRejected, 401),
}


def map_grpc_error(exc: grpc.RpcError, url: str) -> RemoteError:
    """The :class:`RemoteError` for a failed gRPC call (raise it ``from exc``)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    text = f"gRPC {code.name}: {details}" if details else f"gRPC {code.name}"
    if code is grpc.StatusCode.UNAVAILABLE and "refused" in details.lower():
        return RemoteRefused(f"connection refused, {text}", url=url, status=503)
    cls, status = GRPC_ERRORS.get(code, (RemoteProtocolError, 0))
    return cls(text, url=url, status=status or None)


def grpc_target(url: str) -> str:
    """``host:port`` from ``grpc://host:port`` (or ``host:port`` as it is)."""
    for prefix in ("grpc://", "http://"):
        if url.startswith(prefix):
            return url[len(prefix) :].rstrip("/")
    return url.rstrip("/")


class GrpcTransport:
    """OIP gRPC client for one server (thread-safe)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        binary: bool = True,
        headers: dict[str, str] | None = None,
        compress: str | None = None,
    ) -> None:
        self.url = url
        self.binary = binary
        if compress not in _COMPRESSION:
            raise InputError(
                f"compress={compress!r}: gRPC compresses messages with None, 'gzip' or 'deflate'"
            )
        self._compression = _COMPRESSION[compress]
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
        self._channel = grpc.insecure_channel(
            grpc_target(url),
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _call(self, method: Any, message: Any, timeout: float) -> tuple[Any, Any]:
        try:
            response, call = method.with_call(
                message,
                timeout=timeout,
                metadata=self._metadata or None,
                compression=self._compression,
            )
        except grpc.RpcError as exc:
            raise map_grpc_error(exc, self.url) from exc
        return response, call

    def metadata(self, model: str, version: str | None, timeout: float) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version or "")
        response, _ = self._call(self._stub.ModelMetadata, request, timeout)
        try:
            return grpc_codec.model_metadata_from_proto(response)
        except ProtocolError as exc:
            raise RemoteProtocolError(f"bad model metadata: {exc}", url=self.url) from exc

    def ready(self, model: str, version: str | None, timeout: float) -> None:
        request = pb.ModelReadyRequest(name=model, version=version or "")
        response, _ = self._call(self._stub.ModelReady, request, timeout)
        if not response.ready:
            raise RemoteUnavailable(f"model {model!r} is not ready", url=self.url, status=503)

    def infer(
        self,
        request: InferenceRequest,
        version: str | None,
        timeout: float,
        *,
        max_bytes: int | None = None,
    ) -> tuple[InferenceResponse, CallStats]:
        # grpc bounds the whole call by its deadline, and a message (decompressed) by
        # _MAX_MESSAGE; a larger answer than max_bytes is refused once it is here.
        request.model_version = version or ""
        try:
            message = grpc_codec.request_to_proto(request, raw=self.binary)
        except ProtocolError as exc:
            raise RemoteProtocolError(f"cannot encode the request: {exc}", url=self.url) from exc
        start = time.perf_counter()
        response, call = self._call(self._stub.ModelInfer, message, timeout)
        if max_bytes is not None and response.ByteSize() > max_bytes:
            raise RemoteProtocolError(
                f"the answer is {response.ByteSize()} bytes, more than the model's outputs "
                f"can take ({max_bytes})",
                url=self.url,
            )
        try:
            decoded = grpc_codec.response_from_proto(response)
        except ProtocolError as exc:
            raise RemoteProtocolError(f"bad inference response: {exc}", url=self.url) from exc
        timing = None
        for key, value in (*(call.initial_metadata() or ()), *(call.trailing_metadata() or ())):
            if key == "server-timing":
                timing = parse_server_timing(str(value))
        stats = CallStats(
            seconds=time.perf_counter() - start,
            up_bytes=message.ByteSize() + _FRAMING,
            down_bytes=response.ByteSize() + _FRAMING,
            server_s=timing,
        )
        return decoded, stats

    def close(self) -> None:
        self._channel.close()
