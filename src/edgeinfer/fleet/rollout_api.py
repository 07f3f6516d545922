"""The rollout routes of the fleet service, and the timer that decides between reports.

Operators (``Authorization: Bearer <admin token>``)::

    POST /v1/rollouts                    {"model", "version", "stages", ...} -> the rollout
    GET  /v1/rollouts                    the newest rollout of every model
    GET  /v1/rollouts/{model}            the newest rollout of one model, with its events
    POST /v1/rollouts/{model}/pause|resume|abort

Devices (open: what they fetch is signed, and only narrows what TUF allows)::

    GET  /v1/rollouts/{model}/document   {"rollout": TEXT, "signature": B64}
    GET  /v1/rollout-key                 {"public_key": B64} (pin it out of band)

The rollout key is an Ed25519 key of the fleet's own, read from ``RolloutConfig.key_file``
(made there, mode 0600, on first start); replicas share one file. Without a key file the
document routes answer 503 and rollouts still pace nothing on devices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgeinfer._atomic import write_atomic
from edgeinfer.fleet import rollout_docs, rollout_service, rollouts
from edgeinfer.fleet.errors import FleetStoreError, FleetUnavailable, NotFound
from edgeinfer.fleet.reports import parse_json
from edgeinfer.fleet.store import Store

__all__ = ["RolloutConfig", "after_report", "load_key", "rollout_routes", "start_timer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutConfig:
    key_file: Path | None = None  # the fleet's Ed25519 rollout key (PEM, PKCS#8)
    tick_s: float = 5.0  # seconds between the timer's evaluations of running rollouts
    document_ttl_s: float = 86400.0  # seconds a signed rollout document stays valid


def load_key(path: Path) -> Ed25519PrivateKey:
    """The rollout key in ``path``, made (atomically, mode 0600) if the file is missing."""
    if path.is_file():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise FleetStoreError(f"--rollout-key {path}: not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise FleetStoreError(f"--rollout-key {path}: not an Ed25519 private key")
        return key
    made = Ed25519PrivateKey.generate()
    pem = made.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, pem, mode=0o600)
    return made


async def after_report(store: Store, device_id: str, counter: int) -> None:
    """Count an accepted report in its rollout and decide; a failure here is logged, never
    the device's (its report is already committed, and the timer decides again)."""
    try:
        await run_in_threadpool(rollout_service.record_report, store, device_id, counter)
    except (SQLAlchemyError, ValueError) as exc:
        log.warning("rollout decision after report %s#%d failed: %s", device_id, counter, exc)


def start_timer(store: Store, config: RolloutConfig) -> asyncio.Task[None]:
    """A task evaluating every running rollout each ``tick_s`` (cancel it at shutdown)."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(config.tick_s)
            try:
                await run_in_threadpool(rollout_service.evaluate_all, store)
            except SQLAlchemyError as exc:
                log.warning("rollout timer: %s", str(exc).splitlines()[0])

    return asyncio.create_task(tick(), name="rollout-timer")


def rollout_routes(
    store: Store,
    config: RolloutConfig,
    admin: Callable[[Request], None],
    body: Callable[[Request], Awaitable[bytes]],
) -> list[Route]:
    """The rollout routes; ``admin`` raises unless the request carries the admin token,
    ``body`` reads a small request body within the service's caps."""
    key = load_key(config.key_file) if config.key_file is not None else None

    async def db(fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    async def start(request: Request) -> JSONResponse:
        admin(request)
        raw = await body(request)
        model, version, plan, target, previous = rollout_service.plan_from_json(
            parse_json(raw, "body")
        )
        return JSONResponse(
            await db(rollout_service.start, store, model, version, plan, target, previous)
        )

    async def listing(request: Request) -> JSONResponse:
        admin(request)

        def read() -> list[dict[str, Any]]:
            with store.session() as session:
                return rollouts.summaries(session)

        return JSONResponse(await db(read))

    async def one(request: Request) -> JSONResponse:
        admin(request)
        model = request.path_params["model"]

        def read() -> dict[str, Any] | None:
            with store.session() as session:
                return rollouts.summary(session, model)

        found = await db(read)
        if found is None:
            raise NotFound(f"no rollout of model {model[:128]!r}")
        return JSONResponse(found)

    def change(fn: Callable[[Store, str], dict[str, Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Request) -> JSONResponse:
            admin(request)
            await body(request)
            return JSONResponse(await db(fn, store, request.path_params["model"]))

        return handler

    def signing_key() -> Ed25519PrivateKey:
        if key is None:
            raise FleetUnavailable(
                "this fleet service has no rollout key: start it with --rollout-key FILE"
            )
        return key

    async def document(request: Request) -> Response:
        signed = await db(
            rollout_service.document,
            store,
            signing_key(),
            request.path_params["model"],
            config.document_ttl_s,
        )
        return Response(signed, media_type="application/json")

    async def public_key(request: Request) -> JSONResponse:
        return JSONResponse({"public_key": rollout_docs.public_key_b64(signing_key())})

    return [
        Route("/v1/rollouts", start, methods=["POST"]),
        Route("/v1/rollouts", listing, methods=["GET"]),
        Route("/v1/rollout-key", public_key, methods=["GET"]),
        Route("/v1/rollouts/{model}", one, methods=["GET"]),
        Route("/v1/rollouts/{model}/document", document, methods=["GET"]),
        Route("/v1/rollouts/{model}/pause", change(rollout_service.pause), methods=["POST"]),
        Route("/v1/rollouts/{model}/resume", change(rollout_service.resume), methods=["POST"]),
        Route("/v1/rollouts/{model}/abort", change(rollout_service.abort), methods=["POST"]),
    ]
