"""Scale-out on Ray Serve: the same REST app, as a deployment of N replicas.

Each replica builds its own app (its own dataplane, queues and metrics) from the same
:class:`ServeConfig`, and tags its answers with ``x-edgeinfer-replica`` so a client can see
who served it. Ray Serve's HTTP proxy spreads requests over the replicas; gRPC is not
proxied (use the standalone server for gRPC, or one per box behind a gRPC load balancer).

Python entry points: :func:`build_deployment` gives a bound Ray Serve application;
:func:`run_ray` starts Ray, serves it on ``config.host:config.port`` and blocks.

>>> app = build_deployment(ServeConfig(Path("models")), replicas=2)   # doctest: +SKIP
>>> serve.run(app, route_prefix="/")                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from edgeinfer.errors import MissingDependencyError
from edgeinfer.serve.config import ServeConfig

__all__ = ["build_deployment", "run_ray"]


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
            return create_app(dataclasses.replace(self._cfg, replica_id=str(tag)))

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
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_deployment(config, replicas, num_cpus), name="edgeinfer", route_prefix="/")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()
