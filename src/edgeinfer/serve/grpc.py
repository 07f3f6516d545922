"""The gRPC API: ``inference.GRPCInferenceService`` on grpc.aio, over the same dataplane.

Serves ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer
with the protocol's own message definitions (``edgeinfer.protocol.pb``), so Triton's and
KServe's gRPC clients work unchanged. Requests are parsed here rather than by grpc, so a
message that is not valid protobuf is ``INVALID_ARGUMENT`` like any other bad input.
Errors get their code from :func:`~edgeinfer.serve.errors.error_status`. Bearer tokens come
in the ``authorization`` metadata. The server runs on the REST server's event loop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from edgeinfer.protocol import grpc_codec
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb
from edgeinfer.serve.auth import Auth
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.dataplane import DataPlane
from edgeinfer.serve.errors import error_status

__all__ = ["SERVICE", "start_grpc_server"]

SERVICE = "inference.GRPCInferenceService"

Handler = Callable[[Any, Any], Awaitable[Any]]


class _Servicer:
    def __init__(self, dataplane: DataPlane, auth: Auth) -> None:
        self.dp = dataplane
        self.auth = auth

    def _check(self, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.auth.check(metadata.get("authorization"))

    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def server_ready(self, request: Any, context: Any) -> Any:
        await self.dp.start()
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def model_ready(self, request: Any, context: Any) -> Any:
        self._check(context)
        await self.dp.start()
        try:
            ready = self.dp.model_ready(request.name, request.version or None)
        except Exception as exc:
            if error_status(exc).grpc_code != "UNAVAILABLE":
                raise
            ready = False  # known but not loaded: the answer is "not ready", not an error
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        self._check(context)
        return grpc_codec.server_metadata_to_proto(self.dp.server_metadata())

    async def model_metadata(self, request: Any, context: Any) -> Any:
        self._check(context)
        await self.dp.start()
        meta = self.dp.model_metadata(request.name, request.version or None)
        return grpc_codec.model_metadata_to_proto(meta)

    async def model_infer(self, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        status = 200
        try:
            self._check(context)
            await self.dp.start()
            req = grpc_codec.request_from_proto(request, self.dp.config.limits)
            resp = await self.dp.infer(req)
            return grpc_codec.response_to_proto(resp, raw=True)
        except Exception as exc:
            status = error_status(exc).status
            raise
        finally:
            self.dp.metrics.observe_request(
                self.dp.metrics_label(request.model_name),
                "grpc",
                status,
                time.perf_counter() - started,
            )


def _unary(message_type: Any, method: Handler) -> Any:
    """A handler that parses the request itself and maps errors to status codes."""

    async def handle(raw: bytes, context: Any) -> Any:
        try:
            try:
                request = message_type.FromString(raw)
            except DecodeError as exc:
                raise ProtocolError(f"not a valid {message_type.DESCRIPTOR.name}: {exc}") from None
            return await method(request, context)
        except Exception as exc:
            err = error_status(exc)
            failure = (getattr(grpc.StatusCode, err.grpc_code), err.message)
        await context.abort(*failure)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=lambda m: m.SerializeToString()
    )


async def start_grpc_server(config: ServeConfig, dataplane: DataPlane) -> tuple[Any, int]:
    """Start the gRPC server on the running loop; returns it and the port it bound."""
    s = _Servicer(dataplane, config_auth(config))
    handlers = {
        "ServerLive": _unary(pb.ServerLiveRequest, s.server_live),
        "ServerReady": _unary(pb.ServerReadyRequest, s.server_ready),
        "ModelReady": _unary(pb.ModelReadyRequest, s.model_ready),
        "ServerMetadata": _unary(pb.ServerMetadataRequest, s.server_metadata),
        "ModelMetadata": _unary(pb.ModelMetadataRequest, s.model_metadata),
        "ModelInfer": _unary(pb.ModelInferRequest, s.model_infer),
    }
    limit = config.limits.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    host = f"[{config.host}]" if ":" in config.host else config.host
    address = f"{host}:{config.grpc_port}"
    if config.ssl_keyfile and config.ssl_certfile:
        with open(config.ssl_keyfile, "rb") as k, open(config.ssl_certfile, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    await server.start()
    return server, int(port)


def config_auth(config: ServeConfig) -> Auth:
    return Auth(config.tokens, config.admin_tokens)
