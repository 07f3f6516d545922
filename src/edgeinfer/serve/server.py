"""Running the server: in the foreground (the CLI) or on a background thread (tests, demo).

Both run uvicorn with the REST app; the app's lifespan starts the gRPC server on the same
event loop, so REST and gRPC share one dataplane, one set of queues and one metrics registry.
A port of 0 picks a free port; :class:`BackgroundServer` reports the ports it got.
Each REST connection is bounded by edgeinfer/_http.py (head size, head and body deadlines,
a connection cap). A port that cannot be bound, REST or gRPC, is one ``InputError`` line
naming it, not a traceback.

>>> config = ServeConfig(Path("models"), port=0, grpc_port=0)
>>> with BackgroundServer(config) as srv:  # doctest: +SKIP
...     httpx.get(srv.url + "/v2/health/ready")
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edgeinfer.errors import EdgeInferError
from edgeinfer.serve.config import ServeConfig
from edgeinfer.serve.ports import bind_error as _bind_error
from edgeinfer.serve.ports import check_grpc_port
from edgeinfer.serve.ports import reason as _reason

__all__ = ["BackgroundServer", "check_grpc_port", "is_loopback", "run_server", "startup_lines"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _socket(host: str, port: int, what: str = "REST") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _bind_error(what, host, port, _reason(exc)) from None
    sock.set_inheritable(True)
    return sock


def _check_grpc_port(config: ServeConfig) -> None:
    """Fail before startup if the gRPC port is taken (gRPC's own failure is a traceback
    from deep inside the app's startup; :class:`_StartupErrors` still catches the race)."""
    if config.grpc_port:
        check_grpc_port(config.host, config.grpc_port)


_Scope = MutableMapping[str, Any]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _StartupErrors:
    """The ASGI app, with a failed startup told in one line instead of a traceback.

    An ``EdgeInferError`` while the app starts (models loading, the gRPC server binding)
    is kept in ``error`` and taken out of uvicorn's log; the caller raises it once uvicorn
    has given up. Any other exception is a bug and keeps its traceback.
    """

    def __init__(
        self, app: Any, config: ServeConfig, on_started: Callable[[], None] | None = None
    ) -> None:
        self.app, self.config = app, config
        self.error: EdgeInferError | None = None
        self.on_started = on_started

    async def __call__(self, scope: _Scope, receive: Any, send: _Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def lifespan_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                # sent from inside the handler of the failure, so it is the one in flight
                self.error = self._one_line(sys.exc_info()[1])
                if self.error is not None:
                    message = {**message, "message": ""}
            elif message["type"] == "lifespan.startup.complete" and self.on_started:
                self.on_started()  # models loaded, gRPC bound, the REST socket bound before
            await send(message)

        await self.app(scope, receive, lifespan_send)

    def _one_line(self, exc: BaseException | None) -> EdgeInferError | None:
        if isinstance(exc, EdgeInferError):
            return exc
        port = self.config.grpc_port
        if isinstance(exc, RuntimeError) and "Failed to bind" in str(exc) and port is not None:
            return _bind_error(
                "gRPC", self.config.host, port, "it is already in use or not available here"
            )
        return None


def _raise_startup_error(app: _StartupErrors, exc: BaseException) -> None:
    if app.error is not None:
        raise app.error from None
    raise exc


def _uvicorn_config(config: ServeConfig, app: Any, log_level: str) -> Any:
    import uvicorn

    from edgeinfer._http import protocol_class

    return uvicorn.Config(
        app,
        http=protocol_class(config),
        log_level=log_level,
        access_log=False,
        lifespan="on",
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )


def startup_lines(dataplane: Any) -> list[str]:
    """One line per model in service (name, versions, backend) and one per model or version
    that failed to load, with the reason: what an operator checks first after a start."""
    repo = dataplane.repository
    ready: dict[str, list[str]] = {}
    lines: list[str] = []
    for row in repo.index():
        if row["state"] == "READY":
            ready.setdefault(row["name"], []).append(row["version"])
    for name, versions in ready.items():
        backend = repo.get(name).model.backend.name
        label = "version" if len(versions) == 1 else "versions"
        lines.append(f"model {name}: {label} {', '.join(versions)} on {backend}")
    for row in repo.index():
        if row["state"] != "READY":
            version = f" version {row['version']}" if "version" in row else ""
            reason = " ".join(str(row.get("reason", "not loaded")).split())
            lines.append(f"model {row['name']}{version} not loaded: {reason}")
    return lines or ["no models loaded yet"]


def run_server(
    config: ServeConfig,
    log_level: str = "info",
    on_started: Callable[[Any, int], None] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), in the foreground.

    ``on_started(app, rest_port)`` runs once both ports are bound and the models are loaded, before
    the first request is served (the CLI prints its banner there, never before a port
    conflict is known).
    """
    import uvicorn

    from edgeinfer.serve.app import create_app

    asgi = create_app(config)
    app = _StartupErrors(
        asgi,
        config,
        None if on_started is None else (lambda: on_started(asgi, sock.getsockname()[1])),
    )
    _check_grpc_port(config)
    sock = _socket(config.host, config.port)
    server = uvicorn.Server(_uvicorn_config(config, app, log_level))
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn's answer to a failed startup
        _raise_startup_error(app, exc)
    finally:
        sock.close()


class BackgroundServer:
    """A server on a background thread with its own event loop; ``stop()`` ends it."""

    def __init__(self, config: ServeConfig, log_level: str = "warning") -> None:
        import uvicorn

        from edgeinfer.serve.app import create_app

        self.config = config
        self.app = create_app(config)
        self._sock = _socket(config.host, config.port)
        self.port: int = self._sock.getsockname()[1]
        self._asgi = _StartupErrors(self.app, config)
        self._server = uvicorn.Server(_uvicorn_config(config, self._asgi, log_level))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.ssl_certfile else "http"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def grpc_port(self) -> int | None:
        port = self.app.state.grpc_port
        return None if port is None else int(port)

    @property
    def grpc_target(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    @property
    def dataplane(self) -> Any:
        return self.app.state.dataplane

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start()
            self._error = self._asgi.error or exc

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        """Start and wait until the server answers (models loaded)."""
        self._thread = threading.Thread(target=self._run, name="edgeinfer-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                if isinstance(self._error, EdgeInferError):
                    raise self._error
                raise RuntimeError(
                    f"the server did not start within {timeout_s:.0f} s"
                    + (f": {self._error!r}" if self._error else "")
                )
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
