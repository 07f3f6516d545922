"""The REST API: Open Inference Protocol routes on Starlette, served by uvicorn.

Routes (``open_inference_rest.yaml``; ``[/versions/V]`` is optional everywhere)::

    GET  /v2/health/live | /v2/health/ready            open (probes carry no token)
    GET  /v2                                           server metadata
    GET  /v2/models/M[/versions/V]                     model metadata
    GET  /v2/models/M[/versions/V]/ready               model readiness
    POST /v2/models/M[/versions/V]/infer               inference (JSON or binary tensors)
    POST /v2/models/M[/versions/V]/generate[_stream]   generative models (generate_routes.py)
    GET  /v1/models, POST /v1/[chat/]completions       OpenAI-compatible (openai_routes.py)
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

Overload is refused before anything else runs (:mod:`edgeinfer.serve.front`): an inference
request for an overloaded model is answered from a few bytes in front of the app, with no
body read, no routing and no ``Request`` object, so a refusal costs a fraction of an answer.
TLS: pass ``ssl_keyfile``/``ssl_certfile`` in :class:`ServeConfig`; uvicorn terminates it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgeinfer.errors import EdgeInferError
from edgeinfer.protocol import coding, rest
from edgeinfer.protocol.coding import BodyTooLarge
from edgeinfer.serve.auth import Auth
from edgeinfer.serve.bodies import BodyDecoder
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.dataplane import DataPlane
from edgeinfer.serve.errors import BadRequest, error_status, retry_after
from edgeinfer.serve.front import (
    REPLICA_HEADER,
    RETRY_AFTER_MS_HEADER,
    _App,
    _DirectInfer,
    _RefuseOverload,
    _ReplicaHeader,
    retry_headers,
)
from edgeinfer.serve.generate_routes import Generations, generate_routes
from edgeinfer.serve.openai_routes import openai_routes

__all__ = ["REPLICA_HEADER", "RETRY_AFTER_MS_HEADER", "create_app", "retry_headers"]

log = logging.getLogger(__name__)


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
        if admin or not self.auth.open:  # open inference: no header to look at
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
    generations = Generations(dp, routes.auth, read_body)
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
            *generate_routes(generations),
            *openai_routes(generations),
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
    app.infer = _DirectInfer(routes.infer, _on_error, replica)
    return app
