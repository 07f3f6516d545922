"""The gRPC API: ``inference.GRPCInferenceService`` on grpc.aio, over the same dataplane.

Serves ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer
with the protocol's own message definitions (``edgeinfer.protocol.pb``), so Triton's and
KServe's gRPC clients work unchanged. Requests are parsed here rather than by grpc, so a
message that is not valid protobuf is ``INVALID_ARGUMENT`` like any other bad input.
Errors get their code from :func:`~edgeinfer.serve.errors.error_status`. Bearer tokens come
in the ``authorization`` metadata. The server runs on the REST server's event loop.

Overload is refused before the request is parsed: ModelInfer reads the model name and version
from the first bytes of the message (:func:`peek_model`; serializers write fields in field
order, so they come first), checks the token and the model's admission with the client's
deadline, and answers ``UNAVAILABLE`` with ``retry-after-ms`` trailing metadata (and gRPC's
own ``grpc-retry-pushback-ms``, which a client's retry policy obeys). The full parse and the
authoritative admission check follow only for admitted requests. A message longer than its
model can need (:meth:`DataPlane.request_limits`) is refused there too, before it is parsed,
and a large message is parsed on a worker thread. grpc itself reads no message longer than
the loaded models can need (serve/_grpc_listener.py), compressed or not.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from edgeinfer.protocol import grpc_codec
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb
from edgeinfer.serve._grpc_listener import GrpcListener
from edgeinfer.serve.auth import Auth
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.dataplane import DataPlane
from edgeinfer.serve.errors import BadRequest, QueueFull, error_status, retry_after

__all__ = ["RETRY_AFTER_MS_KEY", "SERVICE", "peek_model", "start_grpc_server"]

SERVICE = "inference.GRPCInferenceService"
RETRY_AFTER_MS_KEY = "retry-after-ms"
_PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRPC's retry pushback (gRFC A6)

Handler = Callable[[Any, Any], Awaitable[Any]]
_ON_LOOP_BYTES = 256 << 10  # a longer message is parsed on a worker thread

# ModelInferRequest: model_name = 1, model_version = 2, both strings (wire type 2).
_NAME_TAG, _VERSION_TAG = 0x0A, 0x12


def peek_model(raw: bytes) -> tuple[str, str] | None:
    """(model_name, model_version) of a serialized ``ModelInferRequest``, without parsing it.

    Reads only the leading fields 1 and 2 (in either order); ``None`` when the message does
    not start with them or they do not name a model (the full parse then decides). A later
    duplicate field could name another model, so this only ever serves the early overload
    check, never the request itself.
    """
    found: dict[int, str] = {}
    pos, end = 0, len(raw)
    while pos < end and len(found) < 2:
        tag = raw[pos]
        if tag not in (_NAME_TAG, _VERSION_TAG) or tag in found:
            break
        pos += 1
        length = shift = 0
        while True:  # varint length
            if pos >= end or shift > 28:
                return None
            byte = raw[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > end:
            return None
        try:
            found[tag] = raw[pos : pos + length].decode()
        except UnicodeDecodeError:
            return None
        pos += length
    if _NAME_TAG not in found:
        return None
    return found[_NAME_TAG], found.get(_VERSION_TAG, "")


_TRIM_BYTES = 16 << 20  # after a message this long, freed memory goes back to the system
_TRIM_DELAY_S = 0.5  # seconds: grpc frees a message once its handler has returned
_trim: dict[str, Any] = {}  # "task": the scheduled trim, while one is


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` where there is none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_memory_soon() -> None:
    """Hand the memory a long message leaves behind back to the system, once it is freed.

    glibc keeps freed blocks in the arena of the thread that freed them, and grpc's threads
    free messages: ten refused 62 MB messages left the process 140 MB larger, which a trim
    returned. One trim at a time, on a worker thread, a moment after the message is gone.
    """
    trim = _malloc_trim()
    if trim is None or "task" in _trim:
        return

    async def release() -> None:
        try:
            await asyncio.sleep(_TRIM_DELAY_S)
            await asyncio.to_thread(trim, 0)
        finally:
            _trim.pop("task", None)

    _trim["task"] = asyncio.get_running_loop().create_task(release())


def _deadline(context: Any) -> float | None:
    """Seconds left before the client's deadline, ``None`` when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, float(remaining))


def _trailers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    seconds = retry_after(exc)
    if seconds is None:
        return ()
    ms = str(max(1, math.ceil(seconds * 1e3)))
    return ((RETRY_AFTER_MS_KEY, ms), (_PUSHBACK_KEY, ms))


class _Servicer:
    def __init__(self, dataplane: DataPlane, auth: Auth) -> None:
        self.dp = dataplane
        self.auth = auth
        self._started = False  # the dataplane's start() has returned once

    def _check(self, context: Any) -> None:
        if self.auth.open:
            return  # no tokens: nothing in the metadata to look at
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

    async def model_infer(self, raw: bytes, context: Any) -> Any:
        """ModelInfer after the early checks: parse, run, answer, in one coroutine (each
        layer of coroutines and ``try`` a tiny model's request passes through costs CPU
        beside grpc's own per call, see ADR 0018)."""
        started = time.perf_counter()
        request = None
        try:
            big = len(raw) > _ON_LOOP_BYTES
            try:
                if big:
                    request = await asyncio.to_thread(pb.ModelInferRequest.FromString, raw)
                else:
                    request = pb.ModelInferRequest.FromString(raw)
            except DecodeError as exc:
                raise ProtocolError(f"not a valid ModelInferRequest: {exc}") from None
            self._check(context)
            if not self._started:
                await self.dp.start()
                self._started = True  # started for good: no shielded wait per request
            limits = self.dp.config.limits
            if big:
                req = await asyncio.to_thread(grpc_codec.request_from_proto, request, limits)
            else:
                req = grpc_codec.request_from_proto(request, limits)
            resp, timing = await self.dp.infer_timed(req, _deadline(context))
            context.set_trailing_metadata((("server-timing", timing.header()),))
            answer = grpc_codec.response_to_proto(resp, raw=True)
            self._observe(request.model_name, 200, started)
            return answer
        except Exception as exc:
            err = error_status(exc)
            if request is not None:  # a message that is not one names no model to count
                self._observe(request.model_name, err.status, started)
            failure = (getattr(grpc.StatusCode, err.grpc_code), err.message, _trailers(exc))
        await context.abort(*failure)

    def _observe(self, model: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.dp.metrics.observe_request(self.dp.metrics_label(model), "grpc", status, elapsed)


def _infer_handler(servicer: _Servicer) -> Any:
    """ModelInfer: the early overload check on the raw bytes, then the usual handling."""
    dp, auth = servicer.dp, servicer.auth
    parse_and_infer = servicer.model_infer

    async def handle(raw: bytes, context: Any) -> Any:
        if len(raw) > _TRIM_BYTES:
            _release_memory_soon()  # once this message is gone
        target = peek_model(raw)
        refusal = None if target is None else _early_refusal(raw, target, context)
        if refusal is None:
            return await parse_and_infer(raw, context)
        # Nothing here may keep the message or the refusal's traceback (which holds this
        # frame): a cycle would keep every refused message alive until a full collection,
        # and large messages do not prompt one (ten 62 MB messages held 600 MB).
        del raw
        code, message, trailers = refusal
        await context.abort(code, message, trailers)

    def _early_refusal(
        raw: bytes, target: tuple[str, str], context: Any
    ) -> tuple[Any, str, tuple[tuple[str, str], ...]] | None:
        """The status to refuse with before parsing: the model is overloaded, or the
        message is longer than the model can need; ``None``: parse it."""
        started = time.perf_counter()

        def refuse(exc: Exception) -> tuple[Any, str, tuple[tuple[str, str], ...]]:
            err = error_status(exc)
            elapsed = time.perf_counter() - started
            dp.metrics.observe_request(target[0], "grpc", err.status, elapsed)
            return getattr(grpc.StatusCode, err.grpc_code), err.message, _trailers(exc)

        try:
            if not auth.open:
                auth.check(dict(context.invocation_metadata() or ()).get("authorization"))
            version = target[1] or None
            dp.admit(target[0], version, _deadline(context))
            limits, why = dp.request_limits(target[0], version)
        except QueueFull as exc:
            return refuse(exc)
        except Exception:  # not ours to answer: the full handling gives the right error
            return None
        if len(raw) <= limits.max_body_bytes:
            return None
        return refuse(
            BadRequest(
                f"message of {len(raw)} bytes is larger than the limit of "
                f"{limits.max_body_bytes} bytes ({why})"
            )
        )

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=lambda m: m.SerializeToString()
    )


def _unary(message_type: Any, method: Handler) -> Any:
    """A handler that parses the request itself and maps errors to status codes."""

    async def handle(raw: bytes, context: Any) -> Any:
        try:
            try:
                if len(raw) > _ON_LOOP_BYTES:
                    request = await asyncio.to_thread(message_type.FromString, raw)
                else:
                    request = message_type.FromString(raw)
            except DecodeError as exc:
                raise ProtocolError(f"not a valid {message_type.DESCRIPTOR.name}: {exc}") from None
            return await method(request, context)
        except Exception as exc:
            err = error_status(exc)
            failure = (getattr(grpc.StatusCode, err.grpc_code), err.message, _trailers(exc))
        await context.abort(*failure)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=lambda m: m.SerializeToString()
    )


async def start_grpc_server(config: ServeConfig, dataplane: DataPlane) -> tuple[Any, int]:
    """Start the gRPC server on the running loop; returns it (a :class:`GrpcListener`, which
    follows the models' message limit) and the port it bound."""
    s = _Servicer(dataplane, config_auth(config))
    handlers = {
        "ServerLive": _unary(pb.ServerLiveRequest, s.server_live),
        "ServerReady": _unary(pb.ServerReadyRequest, s.server_ready),
        "ModelReady": _unary(pb.ModelReadyRequest, s.model_ready),
        "ServerMetadata": _unary(pb.ServerMetadataRequest, s.server_metadata),
        "ModelMetadata": _unary(pb.ModelMetadataRequest, s.model_metadata),
        "ModelInfer": _infer_handler(s),
    }
    # generic, not grpc.aio's registered methods (add_registered_method_handlers): those
    # cost more server CPU per tiny-model call at one client here (median 0.50 -> 0.58 ms
    # over 12 paired windows)
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)

    def build(options: list[tuple[str, int]]) -> Any:
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((generic,))
        return server

    def check_port(port: int) -> None:
        from edgeinfer.serve.ports import check_grpc_port

        check_grpc_port(config.host, port)

    listener = GrpcListener(config, dataplane, build, check_port)
    port = await listener.start()
    return listener, port


def config_auth(config: ServeConfig) -> Auth:
    return Auth(config.tokens, config.admin_tokens)
