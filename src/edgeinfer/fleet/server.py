"""Running the fleet service in the foreground with uvicorn, as ``edgeinfer serve`` does.

The database is opened and migrated before the port is bound, so a wrong ``--db`` is one
line and no half-started service. A port of 0 picks a free one; the first line printed
says the address (``fleet service on http://HOST:PORT``), which scripts and tests read.

Connections are bounded as ``edgeinfer serve`` bounds its REST port (:mod:`edgeinfer._http`,
ADR 0014): a request's line and headers must arrive within ``header_timeout_s`` (408), at
most ``max_connections`` are served at once (one more: 503 with ``Retry-After``). A body's
deadline is the app's own (``FleetConfig.body_timeout_s``, a hard cap per body); the
connection's rule for bodies stands behind it at twice that.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgeinfer._http import ConnectionLimits, make_room_for, protocol_class
from edgeinfer.errors import InputError
from edgeinfer.fleet.api import FleetConfig, create_app
from edgeinfer.fleet.store import StoreConfig, open_store

__all__ = ["BackgroundFleet", "ServerConfig", "run_fleet"]


@dataclass(frozen=True)
class ServerConfig:
    store: StoreConfig
    fleet: FleetConfig
    host: str = "127.0.0.1"
    port: int = 8700  # 0: any free port
    header_timeout_s: float = 30.0  # seconds for a request's line and headers (then 408)
    max_connections: int | None = 1000  # served at once; one more is answered 503

    def limits(self) -> ConnectionLimits:
        """The connection bounds, as :mod:`edgeinfer._http` takes them."""
        try:
            return ConnectionLimits(
                header_timeout_s=self.header_timeout_s,
                body_timeout_s=2 * self.fleet.body_timeout_s,  # behind the app's own cap
                max_connections=self.max_connections,
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "it is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise InputError(
            f"cannot listen on port {port} of {host}: {reason}; choose another --port "
            "(0: any free port)"
        ) from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(config: ServerConfig, log_level: str) -> Any:
    import uvicorn

    store = open_store(config.store)
    return uvicorn.Server(
        uvicorn.Config(
            create_app(store, config.fleet),
            http=protocol_class(config.limits()),
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    )


def run_fleet(config: ServerConfig, log_level: str = "warning") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    limits = config.limits()
    if limits.max_connections is not None:
        warning = make_room_for(limits.max_connections)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)
    server = _uvicorn_server(config, log_level)
    try:
        sock = _bind(config.host, config.port)
    except InputError:
        server.config.app.state.store.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"fleet service on http://{shown}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundFleet:
    """The fleet service on a thread of this process, with its own event loop (the demo,
    programs embedding a fleet); ``with BackgroundFleet(config) as fleet: fleet.url``."""

    def __init__(self, config: ServerConfig, log_level: str = "warning") -> None:
        self._server = _uvicorn_server(config, log_level)
        try:
            self._sock = _bind(config.host, config.port)
        except InputError:
            self._server.config.app.state.store.close()
            raise
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundFleet:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the fleet service did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(30)
        self._sock.close()
