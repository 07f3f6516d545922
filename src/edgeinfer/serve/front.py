"""What runs in front of the REST app: the overload refusal, the inference routes' direct
call, and the replica header.

An overloaded server gives many refusals, so a refusal must cost next to nothing:
:class:`_RefuseOverload` answers an inference request for an overloaded model with a 503 from
the request line and headers alone -- no body read, no routing, no ``Request`` object -- and
:class:`_App` puts it in front of Starlette's own middleware. Every 503 carries
``Retry-After`` (whole seconds, at least 1, as RFC 9110 has it) and ``Retry-After-Ms`` (the
server's estimate of when the queue has drained), from :func:`retry_headers`.
An inference request the refusal lets through goes straight to its route too
(:class:`_DirectInfer`): the route and its error handler as Starlette would call them, without
the router's matching and Starlette's middleware layers, which cost more than the rest of an
answer for a small model.
:class:`_ReplicaHeader` names the replica that answered (scale-out). The routes themselves
are :mod:`edgeinfer.serve.app`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeinfer.errors import EdgeInferError
from edgeinfer.serve.auth import Auth
from edgeinfer.serve.dataplane import DataPlane
from edgeinfer.serve.errors import QueueFull

__all__ = ["REPLICA_HEADER", "RETRY_AFTER_MS_HEADER", "retry_headers"]


REPLICA_HEADER = "x-edgeinfer-replica"
RETRY_AFTER_MS_HEADER = "retry-after-ms"


def retry_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, >= 1) and ``Retry-After-Ms`` for a ``seconds`` back-off."""
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        RETRY_AFTER_MS_HEADER: str(max(1, math.ceil(seconds * 1e3))),
    }


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


Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class _DirectInfer:
    """Calls the inference route for ``POST /v2/models/M[/versions/V]/infer`` directly.

    What Starlette does for that route, without its layers: the path parameters ``name``
    (and ``version``) in the scope, a ``Request``, the route, and on an exception the app's
    error handler; an exception that is not an ``EdgeInferError`` or ``HTTPException`` is
    raised again after its answer, as Starlette's ``ServerErrorMiddleware`` does, so the
    server logs it. ``headers``: added to every answer (the replica header, which the
    middleware this skips would add).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        on_error: ErrorHandler,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.endpoint = endpoint
        self.on_error = on_error
        self.headers = list(headers)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        params = {"name": name} if version is None else {"name": name, "version": version}
        scope["path_params"] = params
        request = Request(scope, receive, send)
        unexpected: Exception | None = None
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            response = await self.on_error(request, exc)
            if not isinstance(exc, (EdgeInferError, HTTPException)):
                unexpected = exc
        if self.headers:
            response.raw_headers.extend(self.headers)
        await response(scope, receive, send)
        if unexpected is not None:
            raise unexpected


class _App(Starlette):
    """Starlette with the overload refusal (:class:`_RefuseOverload`) and the inference
    routes (:class:`_DirectInfer`) in front of it all.

    A refusal is the one answer that must cost next to nothing, since an overloaded server
    gives many; in front of Starlette's own middleware it skips their layers (about a
    quarter of its cost in the app). An inference answer for a small model costs little
    more than a refusal, so it skips them too.
    """

    refuse: _RefuseOverload | None = None
    infer: _DirectInfer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.refuse is not None and await self.refuse.answered(scope, send):
            return
        if self.infer is not None and scope["type"] == "http" and scope["method"] == "POST":
            target = _infer_target(scope["path"])
            if target is not None:
                await self.infer(scope, receive, send, *target)
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
