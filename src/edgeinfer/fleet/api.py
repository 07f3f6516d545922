"""The fleet service's HTTP API (Starlette): device routes and operator routes.

Devices (signed bodies, no bearer token)::

    POST /v1/enroll                  {"enrollment": TEXT, "signature": B64} -> {"device_id"}
    POST /v1/reports                 {"report": TEXT, "signature": B64}     -> {"accepted"}

Operators (``Authorization: Bearer <admin token>``)::

    POST /v1/tokens                  {"uses": N}  -> {"id", "token", "uses"}
    GET  /v1/devices                 [{"id", "model", "version", "state", ...}] by id;
                                     ?limit= (1000), ?after=ID (next page) or ?offset=
    GET  /v1/devices/{id}            one device, its recent reports, its class's latency
    POST /v1/devices/{id}/revoke     -> {"id", "revoked_at"}

Staged rollouts (``/v1/rollouts...``, and the signed document devices fetch) are
:mod:`edgeinfer.fleet.rollout_api`'s; an accepted report is counted in its rollout.
``GET /v1/health`` is open. Every body is read up to a cap and no further (413 past it);
every refusal is a 4xx with ``{"error": reason}``; a database that cannot be reached is a
503 the device retries later. The database work runs on worker threads, one session each.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgeinfer.fleet import ingest, inventory, web
from edgeinfer.fleet.errors import (
    BadReport,
    Conflict,
    FleetError,
    Refused,
    RequestTimeout,
    TooLarge,
    Unauthenticated,
)
from edgeinfer.fleet.reports import parse_json
from edgeinfer.fleet.rollout_api import RolloutConfig, after_report, rollout_routes, start_timer
from edgeinfer.fleet.sketches import Sandbox
from edgeinfer.fleet.store import Store

__all__ = ["FleetConfig", "create_app"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FleetConfig:
    admin_tokens: tuple[str, ...]  # bearer tokens of the operator routes
    max_report_bytes: int = 256 * 1024  # a report with 64 sketches of ~3 kB fits
    max_small_bytes: int = 16 * 1024  # enrollment and operator bodies
    body_timeout_s: float = 30.0  # seconds a client may take to send a body (then 408)
    limits: ingest.Limits = field(default_factory=ingest.Limits)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request, cap: int, timeout_s: float) -> bytes:
    """The request body, read no further than ``cap`` bytes and for no longer than
    ``timeout_s`` (a client trickling its body would otherwise hold its worker forever)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise TooLarge(f"body: {int(declared)} bytes, more than the {cap} accepted")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise TooLarge(f"body: more than the {cap} bytes accepted")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"body: not received within {timeout_s:g} s") from None


def _admin(request: Request, config: FleetConfig) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("this operator route needs the admin token (Authorization: Bearer)")
    found = False
    for candidate in config.admin_tokens:  # no early exit: timing tells nothing
        found |= hmac.compare_digest(token.strip().encode(), candidate.encode())
    if not found:
        raise Unauthenticated("invalid admin token")


async def _db(fn: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(fn, *args)


def create_app(store: Store, config: FleetConfig) -> Starlette:
    """The ASGI app over an open :class:`Store` (closed, with the sketch sandbox, at exit)."""
    sandbox = Sandbox()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def enroll(request: Request) -> JSONResponse:
        body = await _body(request, config.max_small_bytes, config.body_timeout_s)
        device_id, counter = await _db(ingest.enroll, store, body, config.limits)
        return JSONResponse({"device_id": device_id, "last_counter": counter})

    async def report(request: Request) -> JSONResponse:
        body = await _body(request, config.max_report_bytes, config.body_timeout_s)
        accepted = await _db(ingest.accept_report, store, body, config.limits, sandbox)
        if not accepted.duplicate and accepted.in_rollout:  # no rollout: nothing to count
            await after_report(store, accepted.device_id, accepted.counter)
        return JSONResponse(
            {
                "accepted": True,
                "device_id": accepted.device_id,
                "counter": accepted.counter,
                "duplicate": accepted.duplicate,
            }
        )

    async def tokens(request: Request) -> JSONResponse:
        _admin(request, config)
        body = await _body(request, config.max_small_bytes, config.body_timeout_s)
        data = parse_json(body, "body") if body.strip() else {}
        if not isinstance(data, dict) or not set(data) <= {"uses"}:
            raise BadReport('body: expected {"uses": N}')
        return JSONResponse(await _db(inventory.create_token, store, data.get("uses", 1)))

    async def devices(request: Request) -> JSONResponse:
        _admin(request, config)
        limit = _int_param(request, "limit", 1000, 1, 100_000)
        offset = _int_param(request, "offset", 0, 0, 10**12)
        after = request.query_params.get("after")
        if after is not None and not 0 < len(after) <= 128:
            raise BadReport("?after: expected a device id (1 to 128 characters)")
        return JSONResponse(await _db(inventory.list_devices, store, limit, offset, after))

    async def device(request: Request) -> JSONResponse:
        _admin(request, config)
        return JSONResponse(
            await _db(inventory.device_detail, store, request.path_params["device_id"])
        )

    async def revoke(request: Request) -> JSONResponse:
        _admin(request, config)
        await _body(request, config.max_small_bytes, config.body_timeout_s)
        return JSONResponse(await _db(inventory.revoke, store, request.path_params["device_id"]))

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FleetError)
        if not isinstance(exc, Refused):
            log.error("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, Conflict) and exc.last_counter is not None:
            # the device resumes above it (its counter file was lost or restored from a backup)
            body = {"error": str(exc), "last_counter": exc.last_counter}
            return JSONResponse(body, status_code=exc.status)
        return _error(exc.status, str(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", str(exc).splitlines()[0])
        response = _error(503, "the fleet database is unavailable; try again later")
        response.headers["Retry-After"] = "5"
        return response

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timer = start_timer(store, config.rollouts)
        try:
            yield
        finally:
            timer.cancel()
            sandbox.close()
            store.close()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
        FleetError: refused,
        HTTPException: http_error,
        OperationalError: db_down,
        DBAPIError: db_down,
    }
    app = Starlette(
        routes=[
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/enroll", enroll, methods=["POST"]),
            Route("/v1/reports", report, methods=["POST"]),
            Route("/v1/tokens", tokens, methods=["POST"]),
            Route("/v1/devices", devices, methods=["GET"]),
            Route("/v1/devices/{device_id}", device, methods=["GET"]),
            Route("/v1/devices/{device_id}/revoke", revoke, methods=["POST"]),
            *rollout_routes(
                store,
                config.rollouts,
                lambda request: _admin(request, config),
                lambda request: _body(request, config.max_small_bytes, config.body_timeout_s),
            ),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = web.mount(app, store, config.admin_tokens)  # dashboard, /metrics
    return app


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadReport(f"?{name}={raw[:20]}: expected an integer from {lo} to {hi}")
    return int(raw)
