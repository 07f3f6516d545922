"""The gRPC port: grpc's server under a message limit the loaded models set, and its options.

grpc reads and inflates a whole message before a handler sees a byte of it, up to the
server's ``grpc.max_receive_message_length``; past that limit grpc core stops inflating and
answers ``RESOURCE_EXHAUSTED`` itself. The server's general body limit (64 MiB) let 61 KB of
gzip become a 62 MB message in the server's memory, so the limit here is what the loaded
models can need instead: the largest :meth:`DataPlane.request_limits` over every version in
service (the inputs at ``max_batch_size`` rows), never above the server's limit. The
handler then holds each message to its own model's need with a message of its own.

grpc fixes a server's options when it is built, so when the models' need changes (a model
loaded, unloaded or replaced with another signature) a new server is started on the same port
and the old one is stopped with a grace period: both listen with ``SO_REUSEPORT`` for that
moment, new connections go to either, and the old one sends GOAWAY and finishes its calls,
which clients follow to the new one. A call that reaches the old server in the instant its
shutdown begins, before its client has read the GOAWAY, is cancelled by grpc core
(``CANCELLED``; measured: at most one call per swap, in 3 of 12 swaps on a loaded 2-core
machine); a client that retries ``CANCELLED`` never sees it. A request that needs more than the
limit in place is refused with ``RESOURCE_EXHAUSTED`` until the change is seen (at most
:data:`CHECK_EVERY_S` later). As ``SO_REUSEPORT`` lets another such socket share the port, the
port is first bound plainly, which fails while anything else listens there.

The connections themselves are bounded by the :class:`ServeConfig` they share with REST
(``max_connections``; ``header_timeout_s`` for the HTTP/2 preface and settings) and by
``grpc_max_streams`` and ``grpc_idle_timeout_s``; keepalive pings drop dead peers, and
grpc's own ping-flood rules (two strikes) stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]

from edgeinfer.errors import EdgeInferError
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.dataplane import DataPlane

__all__ = ["CHECK_EVERY_S", "MIN_MESSAGE_BYTES", "GrpcListener", "message_limit", "server_options"]

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0  # seconds between two looks at what the loaded models need
MIN_MESSAGE_BYTES = 64 << 10  # bytes: the limit with no model loaded (health, metadata)
SWAP_GRACE_S = 5.0  # seconds the replaced server's calls get to finish
KEEPALIVE_S = 60.0  # seconds between the server's pings on a quiet connection
KEEPALIVE_TIMEOUT_S = 20.0  # seconds a ping may go unanswered before the connection drops


def message_limit(dp: DataPlane) -> int:
    """The most bytes a message to this server can need: the largest body limit of any model
    version in service, at least :data:`MIN_MESSAGE_BYTES`, at most the server's limit."""
    need = MIN_MESSAGE_BYTES
    repo = dp.repository
    for name in repo.names():
        for version in repo.versions(name):
            try:
                bound = dp.request_limits(name, str(version)).limits.max_body_bytes
            except EdgeInferError:  # unloaded between the two looks
                continue
            need = max(need, bound)
    return min(need, dp.config.limits.max_body_bytes)


def server_options(config: ServeConfig, limit: int) -> list[tuple[str, int]]:
    """grpc's channel arguments for a server taking messages of at most ``limit`` bytes."""
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1),  # for the moment two servers share the port
        ("grpc.max_concurrent_streams", config.grpc_max_streams),
        ("grpc.max_connection_idle_ms", round(config.grpc_idle_timeout_s * 1e3)),
        # a connection that never sends its HTTP/2 preface and settings is closed
        ("grpc.server_handshake_timeout_ms", round(config.header_timeout_s * 1e3)),
        ("grpc.keepalive_time_ms", round(KEEPALIVE_S * 1e3)),
        ("grpc.keepalive_timeout_ms", round(KEEPALIVE_TIMEOUT_S * 1e3)),
    ]
    if config.max_connections is not None:
        options.append(("grpc.max_allowed_incoming_connections", config.max_connections))
    return options


class GrpcListener:
    """grpc's server on one port, replaced by another when the message limit must change.

    ``build(options)`` makes a server with its handlers and no port; ``check_port(port)``
    raises when the port is taken. :meth:`stop` is what the app calls at shutdown.
    """

    def __init__(
        self,
        config: ServeConfig,
        dataplane: DataPlane,
        build: Callable[[list[tuple[str, int]]], Any],
        check_port: Callable[[int], None],
    ) -> None:
        self.config, self.dp = config, dataplane
        self._build, self._check_port = build, check_port
        self._server: Any = None
        self._retiring: set[Any] = set()  # replaced servers still finishing their calls
        self._watch: asyncio.Task[None] | None = None
        self._swap_lock = asyncio.Lock()
        self.port = 0
        self.limit = 0
        self.swaps = 0  # servers replaced so far

    @property
    def address(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Bind the configured port (0: any free one), start serving; returns the port."""
        if self.config.grpc_port:
            self._check_port(self.config.grpc_port)
        self.port = self.config.grpc_port or 0
        self.limit = message_limit(self.dp)
        self._server = await self._serve(self.limit)
        self._watch = asyncio.get_running_loop().create_task(self._follow())
        return self.port

    async def _serve(self, limit: int) -> Any:
        server = self._build(server_options(self.config, limit))
        keyfile, certfile = self.config.ssl_keyfile, self.config.ssl_certfile
        if keyfile and certfile:
            with open(keyfile, "rb") as k, open(certfile, "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            port = server.add_secure_port(self.address, creds)
        else:
            port = server.add_insecure_port(self.address)
        await server.start()
        self.port = int(port)
        return server

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                await self.update()
            except Exception:  # keep the server in place; look again next time
                log.exception("could not restart the gRPC server under a new message limit")

    async def update(self) -> bool:
        """Start a server under the models' current need if it differs; True if it did."""
        async with self._swap_lock:
            limit = message_limit(self.dp)
            if limit == self.limit or self._server is None:
                return False
            new = await self._serve(limit)
            old, self._server, previous = self._server, new, self.limit
            self.limit = limit
            self.swaps += 1
            log.info("gRPC message limit %d -> %d bytes (models changed)", previous, limit)
            self._retiring.add(old)
        try:
            await old.stop(grace=SWAP_GRACE_S)
        finally:
            self._retiring.discard(old)
        return True

    async def stop(self, grace: float | None = None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        async with self._swap_lock:
            server, self._server = self._server, None
        servers = [s for s in (server, *self._retiring) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))


def port_is_free(host: str, port: int) -> OSError | None:
    """Bind ``port`` plainly (no ``SO_REUSEPORT``) and listen for a moment: the error when
    something listens there already, else ``None``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            return exc
    return None
