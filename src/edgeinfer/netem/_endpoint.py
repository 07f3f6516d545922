"""Where a proxy listens, and its context-manager form (shared by both proxies)."""

from __future__ import annotations

from typing import TypeVar


class _Endpoint:
    """Where a proxy listens, and its context-manager form (shared by both proxies)."""

    _listen: tuple[str, int]
    _port: int

    def start(self: _E) -> _E:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _E) -> _E:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._listen[0]

    @property
    def port(self) -> int:
        """The port clients connect to (known once started)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the proxy, for HTTP clients."""
        return f"http://{self.address}"


_E = TypeVar("_E", bound=_Endpoint)
