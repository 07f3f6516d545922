"""Scale-out on Ray Serve: the same REST app, as a deployment of N replicas.

Each replica builds its own app (its own dataplane, queues and metrics) from the same
:class:`ServeConfig`, and tags its answers with ``x-edgeinfer-replica`` so a client can see
who served it. Ray Serve's HTTP proxy spreads requests over the replicas; gRPC is not
proxied (use the standalone server for gRPC, or one per box behind a gRPC load balancer).

What the server's limits become under Ray. Inside each replica the app is the same, so what
it checks applies unchanged: the body limits (``limits.max_body_bytes``, lowered per model to
what its inputs can need at ``max_batch_size`` rows, before a body is read or inflated), the
datatype and batch checks, NaN in JSON, tokens, admission. The body deadline
(``body_timeout_s`` plus one second per ``min_body_rate`` bytes) is kept here too, counted
while the replica waits for the body the proxy passes on (:class:`BodyDeadline`). Ray's HTTP
proxy owns the connections, and its uvicorn takes none of edgeinfer's connection guards:
``max_header_bytes``, ``max_headers``, ``header_timeout_s`` and ``max_connections`` do not
apply (the proxy closes kept-alive connections after 30 s like the server, and serves TLS with
``ssl_keyfile``/``ssl_certfile``). Put a proxy that bounds request heads and connections in
front of a Ray deployment reachable from untrusted clients.

Python entry points: :func:`build_deployment` gives a bound Ray Serve application;
:func:`run_ray` starts Ray, serves it on ``config.host:config.port`` and blocks.

>>> app = build_deployment(ServeConfig(Path("models")), replicas=2)   # doctest: +SKIP
>>> serve.run(app, route_prefix="/")                                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edgeinfer.errors import MissingDependencyError
from edgeinfer.serve.config import ServeConfig

__all__ = ["NOT_APPLIED", "BodyDeadline", "build_deployment", "http_options", "run_ray"]

# ServeConfig fields Ray's HTTP proxy does not apply (it owns the connections)
NOT_APPLIED = ("max_header_bytes", "max_headers", "header_timeout_s", "max_connections")
KEEP_ALIVE_S = 30  # seconds, as the standalone server keeps an idle connection

_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class BodyDeadline:
    """ASGI middleware: a request body must arrive within ``body_timeout_s`` plus one second
    per ``min_body_rate`` bytes received, counting only the time the app waits for it.

    The standalone server bounds this per connection (edgeinfer/_http.py); a Ray replica sees no
    connection, only the body its proxy forwards as the app asks, so the same rule is kept
    around the app's ``receive``. Late: 408 with ``{"error": ...}`` (unless the app has begun
    its answer), and the app is told the client left.
    """

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: _Message, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        timeout, rate = self.config.body_timeout_s, self.config.min_body_rate
        state = {"allowed": timeout, "waited": 0.0, "started": False, "ended": False}

        async def bounded_receive() -> _Message:
            if state["ended"]:
                return {"type": "http.disconnect"}
            started = loop.time()
            try:
                message = await asyncio.wait_for(receive(), state["allowed"] - state["waited"])
            except asyncio.TimeoutError:
                state["ended"] = True
                if not state["started"]:
                    await _answer_408(send, timeout, rate)
                return {"type": "http.disconnect"}
            state["waited"] += loop.time() - started
            if message["type"] == "http.request":
                state["allowed"] += len(message.get("body", b"")) / rate
            return message

        async def guarded_send(message: _Message) -> None:
            if state["ended"] and not state["started"]:
                return  # answered 408 already
            state["started"] = True
            await send(message)

        await self.app(scope, bounded_receive, guarded_send)

    def __getattr__(self, name: str) -> Any:
        # Ray asks the app for its hooks (add_exception_handler, docs_url): the app's own
        return getattr(self.app, name)


async def _answer_408(send: _Send, timeout: float, rate: float) -> None:
    message = (
        f"request body not received in time ({timeout:g} s, plus one second per {rate:g} "
        "bytes received)"
    )
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_options(config: ServeConfig) -> dict[str, Any]:
    """Ray Serve's ``http_options`` for the proxy: what of ``config`` it can apply."""
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "keep_alive_timeout_s": KEEP_ALIVE_S,
    }
    if config.ssl_keyfile and config.ssl_certfile:
        options.update(ssl_keyfile=config.ssl_keyfile, ssl_certfile=config.ssl_certfile)
    return options


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise MissingDependencyError("ray", "ray", "serving on Ray Serve") from exc
    return serve


def build_deployment(
    config: ServeConfig, replicas: int = 2, num_cpus: float = 1.0, name: str = "edgeinfer"
) -> Any:
    """A bound Ray Serve application running ``replicas`` copies of the REST app."""
    serve = _serve()
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    # a replica's process is Ray's worker, with Ray's own heap and threads: not the server's
    # to freeze or to retune
    replica_config = dataclasses.replace(
        config, grpc_port=None, freeze_heap=False, switch_interval_s=None
    )

    @serve.ingress()
    class EdgeInferReplica:
        def __init__(self, cfg: ServeConfig) -> None:
            self._cfg = cfg

        def __serve_build_asgi_app__(self) -> Any:
            from edgeinfer.serve.app import create_app

            tag = serve.get_replica_context().replica_tag
            cfg = dataclasses.replace(self._cfg, replica_id=str(tag))
            return BodyDeadline(create_app(cfg), cfg)

    deployment = serve.deployment(
        EdgeInferReplica,
        name=name,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=max(config.batching.max_queue_size, 8),
    )
    return deployment.bind(replica_config)


def run_ray(config: ServeConfig, replicas: int = 2, num_cpus: float = 1.0) -> None:
    """Start a local Ray, serve the deployment on ``config.host:config.port``, block."""
    import ray

    serve = _serve()
    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options=http_options(config))
        serve.run(build_deployment(config, replicas, num_cpus), name="edgeinfer", route_prefix="/")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()
