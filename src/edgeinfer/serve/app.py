"""The REST API: Open Inference Protocol routes on Starlette, served by uvicorn.

Routes (``open_inference_rest.yaml``; ``[/versions/V]`` is optional everywhere)::

    GET  /v2/health/live | /v2/health/ready            open (probes carry no token)
    GET  /v2                                           server metadata
    GET  /v2/models/M[/versions/V]                     model metadata
    GET  /v2/models/M[/versions/V]/ready               model readiness
    POST /v2/models/M[/versions/V]/infer               inference (JSON or binary tensors)
    POST /v2/repository/index                          inference token (read-only, as Triton)
    POST /v2/repository/models/M/load | unload         admin token
    GET  /metrics                                      Prometheus text format

Every error is ``{"error": "..."}`` with the status :func:`error_status` gives it, written by
one exception handler; a 503 also carries ``Retry-After`` (whole seconds, at least 1, as
RFC 9110 has it) and ``Retry-After-Ms`` (the server's estimate of when the queue has drained,
for clients that read it). Bodies are read up to ``limits.max_body_bytes`` and no further;
an inference body only up to what its model can need (:meth:`DataPlane.request_limits`: a
request for a model of four floats at a batch of eight never needs more than about 64 kB).

Compression (:mod:`edgeinfer.protocol.coding`, as Triton's HTTP endpoint): an inference body
sent with ``Content-Encoding: zstd | gzip | deflate`` is decoded (to at most the same limit;
an unknown coding is a 415), and an answer of at least ``compress_min_bytes`` is compressed
when the request's ``Accept-Encoding`` asks for a coding the server has. A large body is
inflated on a worker thread and, if it is JSON, parsed in a worker process
(:mod:`edgeinfer.serve.bodies`), so the event loop keeps answering other clients meanwhile.

Overload is refused before anything else runs: :class:`_RefuseOverload` sits in front of
the app (Starlette's own middleware included) and answers an inference request for an
overloaded model from a few bytes, with no body read, no routing and no ``Request`` object,
so a refusal costs a fraction of an answer.
TLS: pass ``ssl_keyfile``/``ssl_certfile`` in :class:`ServeConfig`; uvicorn terminates it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeinfer.errors import EdgeInferError
from edgeinfer.protocol import coding, rest
from edgeinfer.protocol.coding import BodyTooLarge
from edgeinfer.serve.auth import Auth
from edgeinfer.serve.bodies import BodyDecoder
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.dataplane import DataPlane
from edgeinfer.serve.errors import BadRequest, QueueFull, error_status, retry_after

__all__ = ["REPLICA_HEADER", "RETRY_AFTER_MS_HEADER", "create_app", "retry_headers"]

log = logging.getLogger(__name__)
REPLICA_HEADER = "x-edgeinfer-replica"
RETRY_AFTER_MS_HEADER = "retry-after-ms"


def retry_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, >= 1) and ``Retry-After-Ms`` for a ``seconds`` back-off."""
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        RETRY_AFTER_MS_HEADER: str(max(1, math.ceil(seconds * 1e3))),
    }


def error_response(exc: BaseException) -> JSONResponse:
    """The one place an exception becomes an HTTP answer."""
    status = error_status(exc)
    if status.status >= 500 and not isinstance(exc, EdgeInferError):
        log.error("unexpected error", exc_info=exc)
    retry = retry_after(exc)
    headers = None if retry is None else retry_headers(retry)
    return JSONResponse({"error": status.message}, status_code=status.status, headers=headers)


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
    return error_response(exc)


async def read_body(request: Request, limit: int, why: str = "") -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes
    (``why``: where the limit comes from, for the message)."""
    because = f" ({why})" if why else ""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise BadRequest(
                f"request body of {int(declared)} bytes is larger than the limit of {limit} "
                f"bytes{because}"
            )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"request body is larger than the limit of {limit} bytes{because}")
            chunks.append(chunk)
    except ClientDisconnect:
        # A client gone mid-body (or cut off by the body timeout, which has answered 408
        # already) is the client's doing: no traceback in the server's log.
        raise BadRequest("the connection closed before the request body ended") from None
    return b"".join(chunks)


async def _decoded(
    decoder: BodyDecoder, body: bytes, content_encoding: str | None, limit: int, why: str
) -> tuple[bytes, float]:
    """A request body with its ``Content-Encoding`` undone (inflating to at most ``limit``
    bytes), and the seconds that took."""
    if not content_encoding or content_encoding.strip().lower() == "identity":
        return body, 0.0
    start = time.perf_counter()
    try:
        plain: bytes = await decoder.off_loop(coding.decode, body, content_encoding, limit=limit)
    except BodyTooLarge as exc:
        raise BadRequest(f"{exc} ({why})") from None
    return plain, time.perf_counter() - start


class _Routes:
    def __init__(self, dataplane: DataPlane, auth: Auth) -> None:
        self.dp = dataplane
        self.auth = auth
        self.limits = dataplane.config.limits
        self.decoder = BodyDecoder()

    def _check(self, request: Request, admin: bool = False) -> None:
        self.auth.check(request.headers.get("authorization"), admin=admin)

    @staticmethod
    def _model(request: Request) -> tuple[str, str | None]:
        p = request.path_params
        return p["name"], p.get("version")

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": self.dp.live()})

    async def ready(self, request: Request) -> Response:
        await self.dp.start()
        if self.dp.ready():
            return JSONResponse({"ready": True})
        return JSONResponse(
            {"error": "not every model is loaded yet"}, status_code=503, headers=retry_headers(1.0)
        )

    async def server_metadata(self, request: Request) -> Response:
        self._check(request)
        return JSONResponse(self.dp.server_metadata().to_json())

    async def model_metadata(self, request: Request) -> Response:
        self._check(request)
        await self.dp.start()
        return JSONResponse(self.dp.model_metadata(*self._model(request)).to_json())

    async def model_ready(self, request: Request) -> Response:
        self._check(request)
        await self.dp.start()
        name, version = self._model(request)
        return JSONResponse({"name": name, "ready": self.dp.model_ready(name, version)})

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name, version = self._model(request)
        status = 200
        try:
            self._check(request)
            await self.dp.start()
            self.dp.admit(name, version)  # overload: refuse before reading the body
            limits, why = self.dp.request_limits(name, version)
            body = await read_body(request, limits.max_body_bytes, why)
            body, decode_s = await _decoded(
                self.decoder,
                body,
                request.headers.get("content-encoding"),
                limits.max_body_bytes,
                why,
            )
            header_length = rest.parse_header_length(request.headers.get(rest.HEADER_LENGTH))
            req = await self.decoder.request(body, header_length, limits)
            req.model_name, req.model_version = name, version or ""
            resp, timing = await self.dp.infer_timed(req)
            binary = rest.binary_outputs(req, [t.name for t in resp.outputs])
            encoded = rest.encode_response(resp, binary=binary)
            headers = dict(encoded.headers)
            out, encode_s = encoded.body, 0.0
            min_bytes = self.dp.config.compress_min_bytes
            if min_bytes is not None and coding.worth_encoding(len(out), min_bytes):
                chosen = coding.negotiate(request.headers.get("accept-encoding"))
                if chosen is not None:
                    t1 = time.perf_counter()
                    out = await self.decoder.off_loop(coding.encode, out, chosen)
                    encode_s = time.perf_counter() - t1
                    headers["Content-Encoding"] = chosen
                    headers["Vary"] = "Accept-Encoding"
            headers["Server-Timing"] = timing.header(decode_s, encode_s)
            return Response(out, headers=headers)
        except Exception as exc:
            status = error_status(exc).status
            raise
        finally:
            self.dp.metrics.observe_request(
                self.dp.metrics_label(name), "rest", status, time.perf_counter() - started
            )

    async def repository_index(self, request: Request) -> Response:
        # Reading the index changes nothing: any client that may infer may list the models
        # (Triton's clients call it before they pick one); load/unload need the admin token.
        self._check(request)
        await self.dp.start()
        body = await read_body(request, self.limits.max_body_bytes)
        only_ready = False
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError:
                raise BadRequest(
                    'the index request body must be JSON, e.g. {"ready": true}'
                ) from None
            only_ready = isinstance(doc, dict) and doc.get("ready") is True
        rows = self.dp.repository.index()
        if only_ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return JSONResponse(rows)

    async def repository_load(self, request: Request) -> Response:
        self._check(request, admin=True)
        await self.dp.start()
        await read_body(request, self.limits.max_body_bytes)
        await self.dp.repository.load(request.path_params["name"])
        return JSONResponse({})

    async def repository_unload(self, request: Request) -> Response:
        self._check(request, admin=True)
        await self.dp.start()
        await read_body(request, self.limits.max_body_bytes)
        await self.dp.repository.unload(request.path_params["name"])
        return JSONResponse({})

    async def metrics(self, request: Request) -> Response:
        self._check(request)
        body, content_type = self.dp.metrics.render()
        return Response(body, media_type=content_type)


_INFER_PREFIX = "/v2/models/"
_INFER_SUFFIX = "/infer"


def _infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of an inference path, ``None`` for any other path."""
    if not (path.startswith(_INFER_PREFIX) and path.endswith(_INFER_SUFFIX)):
        return None
    parts = path[len(_INFER_PREFIX) : -len(_INFER_SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class _RefuseOverload:
    """Answers 503 to an inference request for an overloaded model before anything else runs.

    Checks the token and the model's admission (:meth:`DataPlane.admit`) from the request line
    and headers alone; a refusal is written from a few bytes and counted in the metrics. Any
    other outcome -- admitted, a bad token, an unknown model -- goes on to the app, which
    gives every other answer (and checks admission again after the body is read).
    ``headers``: sent with every refusal besides its own (the replica header).
    """

    def __init__(
        self, dataplane: DataPlane, auth: Auth, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        self.dp = dataplane
        self.auth = auth
        self.headers = [(b"content-type", b"application/json"), *headers]

    async def answered(self, scope: Scope, send: Send) -> bool:
        """Refuse the request if its model is overloaded; whether it did."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        target = _infer_target(scope["path"])
        if target is None:
            return False
        started = time.perf_counter()
        refusal = self._refusal(scope, *target)
        if refusal is None:
            return False
        await self._refuse(send, refusal)
        self.dp.metrics.observe_request(target[0], "rest", 503, time.perf_counter() - started)
        return True

    def _refusal(self, scope: Scope, name: str, version: str | None) -> QueueFull | None:
        try:
            if not self.auth.open:
                header = None
                for key, value in scope["headers"]:
                    if key == b"authorization":
                        header = value.decode("latin-1")
                        break
                self.auth.check(header)
            self.dp.admit(name, version)
        except QueueFull as exc:
            return exc
        except Exception:  # not ours to answer: the route gives the right error
            return None
        return None

    async def _refuse(self, send: Send, exc: QueueFull) -> None:
        body = b'{"error":%s}' % json.dumps(str(exc)).encode()
        headers = [*self.headers, (b"content-length", b"%d" % len(body))]
        headers += (
            (k.encode(), v.encode()) for k, v in retry_headers(exc.retry_after_s or 0).items()
        )
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _App(Starlette):
    """Starlette with the overload refusal (:class:`_RefuseOverload`) in front of it all.

    A refusal is the one answer that must cost next to nothing, since an overloaded server
    gives many; in front of Starlette's own middleware it skips their layers (about a
    quarter of its cost in the app).
    """

    refuse: _RefuseOverload | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.refuse is not None and await self.refuse.answered(scope, send):
            return
        await super().__call__(scope, receive, send)


class _ReplicaHeader:
    """Adds ``x-edgeinfer-replica`` to every response (scale-out: who answered)."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.value = replica_id.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (REPLICA_HEADER.encode(), self.value),
                ]
            await send(message)

        await self.app(scope, receive, send_with_header)


@contextlib.contextmanager
def _switch_interval(seconds: float | None) -> Iterator[None]:
    """The GIL switch interval set to ``seconds`` for the block (see
    ``ServeConfig.switch_interval_s``) and the previous one back after; ``None``: untouched."""
    if seconds is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def create_app(config: ServeConfig, dataplane: DataPlane | None = None) -> Starlette:
    """The REST app; its lifespan loads the repository and runs the gRPC server if asked."""
    dp = dataplane or DataPlane(config)
    routes = _Routes(dp, Auth(config.tokens, config.admin_tokens))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with _switch_interval(config.switch_interval_s):
            await dp.start()
            grpc_server: Any = None
            if config.grpc_port is not None:
                from edgeinfer.serve.grpc import start_grpc_server

                grpc_server, app.state.grpc_port = await start_grpc_server(config, dp)
            dp.settle_heap()  # everything the server needs for its life now exists
            try:
                yield
            finally:
                if grpc_server is not None:
                    await grpc_server.stop(grace=1.0)
                await dp.stop()
                routes.decoder.close()

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    r = routes
    app = _App(
        routes=[
            Route("/v2/health/live", r.live, methods=["GET"]),
            Route("/v2/health/ready", r.ready, methods=["GET"]),
            Route("/v2", r.server_metadata, methods=["GET"]),
            Route("/v2/", r.server_metadata, methods=["GET"]),
            Route(m, r.model_metadata, methods=["GET"]),
            Route(mv, r.model_metadata, methods=["GET"]),
            Route(m + "/ready", r.model_ready, methods=["GET"]),
            Route(mv + "/ready", r.model_ready, methods=["GET"]),
            Route(m + "/infer", r.infer, methods=["POST"]),
            Route(mv + "/infer", r.infer, methods=["POST"]),
            Route("/v2/repository/index", r.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", r.repository_load, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", r.repository_unload, methods=["POST"]),
            Route("/metrics", r.metrics, methods=["GET"]),
        ],
        exception_handlers={
            Exception: _on_error,
            HTTPException: _on_error,
            EdgeInferError: _on_error,
        },
        lifespan=lifespan,
    )
    app.state.dataplane = dp
    app.state.grpc_port = None
    replica: tuple[tuple[bytes, bytes], ...] = ()
    if config.replica_id:
        app.add_middleware(_ReplicaHeader, replica_id=config.replica_id)
        replica = ((REPLICA_HEADER.encode(), config.replica_id.encode()),)
    app.refuse = _RefuseOverload(dp, routes.auth, replica)
    return app
