"""Running the server: in the foreground (the CLI) or on a background thread (tests, demo).

Both run uvicorn with the REST app; the app's lifespan starts the gRPC server on the same
event loop, so REST and gRPC share one dataplane, one set of queues and one metrics registry.
A port of 0 picks a free port; :class:`BackgroundServer` reports the ports it got.

>>> config = ServeConfig(Path("models"), port=0, grpc_port=0)
>>> with BackgroundServer(config) as srv:  # doctest: +SKIP
...     httpx.get(srv.url + "/v2/health/ready")
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from edgeinfer.serve.config import ServeConfig

__all__ = ["BackgroundServer", "is_loopback", "run_server"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(config: ServeConfig, app: Any, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )


def run_server(config: ServeConfig, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), in the foreground."""
    import uvicorn

    from edgeinfer.serve.app import create_app

    app = create_app(config)
    sock = _socket(config.host, config.port)
    server = uvicorn.Server(_uvicorn_config(config, app, log_level))
    server.run(sockets=[sock])


class BackgroundServer:
    """A server on a background thread with its own event loop; ``stop()`` ends it."""

    def __init__(self, config: ServeConfig, log_level: str = "warning") -> None:
        import uvicorn

        from edgeinfer.serve.app import create_app

        self.config = config
        self.app = create_app(config)
        self._sock = _socket(config.host, config.port)
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(config, self.app, log_level))
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
            self._error = exc

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        """Start and wait until the server answers (models loaded)."""
        self._thread = threading.Thread(target=self._run, name="edgeinfer-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
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
