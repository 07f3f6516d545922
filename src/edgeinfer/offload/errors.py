"""The errors of offloading: a remote that could not answer, and a request nowhere to run.

Transport exceptions (httpx, grpc) are mapped once, at the boundary in
:mod:`edgeinfer.offload.remote`, to the most specific class here, with the original kept
as ``__cause__``::

    EdgeInferError
    ├── RemoteError               a remote server did not give a usable answer; has .url,
    │   │                         .status (HTTP status or None) and .retryable
    │   ├── RemoteUnavailable     could not reach the server, the connection dropped, or it
    │   │   │                     answered 503: worth retrying (retryable)
    │   │   └── RemoteRefused     nothing listens there: connection refused (retryable)
    │   ├── RemoteTimeout         no answer within the per-try timeout (not retried: the
    │   │   │                     time is spent; the offloader falls back to local)
    │   │   └── RemoteConnectTimeout  could not even connect in time (retryable: nothing
    │   │                         was sent)
    │   ├── RemoteRejected        4xx: the server refused this request (bad input, unknown
    │   │                         model, unauthorized); never retried
    │   ├── RemoteServerError     5xx other than 503: the server failed; not retried
    │   └── RemoteProtocolError   the answer is not a valid Open Inference Protocol message,
    │                             or does not fit the model's outputs (names, dtypes,
    │                             shapes, size)
    └── OffloadError              the offloader cannot place a request at all
        └── NoPlacementError      no local model and no reachable remote (or private inputs
                                  with no local model): raised fast, says why

"The remote side is bad" (``RemoteRejected``, ``RemoteProtocolError``) is kept apart from
"the transport failed" (``RemoteUnavailable``, ``RemoteTimeout``), so retry logic needs only
``err.retryable``.
"""

from __future__ import annotations

from edgeinfer.errors import EdgeInferError

__all__ = [
    "NoPlacementError",
    "OffloadError",
    "RemoteConnectTimeout",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteRefused",
    "RemoteRejected",
    "RemoteServerError",
    "RemoteTimeout",
    "RemoteUnavailable",
]


class RemoteError(EdgeInferError):
    """A remote server did not give a usable answer."""

    retryable = False  # may the same request be sent again (here or to another remote)?

    def __init__(self, message: str, *, url: str = "", status: int | None = None) -> None:
        self.url = url
        self.status = status
        where = f" ({url})" if url else ""
        super().__init__(f"{message}{where}")


class RemoteUnavailable(RemoteError):
    """Could not reach the server, the connection dropped, or it answered 503."""

    retryable = True


class RemoteRefused(RemoteUnavailable):
    """The connection was refused: no server listens at that address."""


class RemoteTimeout(RemoteError):
    """The server did not answer within the per-try timeout."""


class RemoteConnectTimeout(RemoteTimeout):
    """The connection could not be opened in time; nothing was sent, so it may be retried."""

    retryable = True


class RemoteRejected(RemoteError):
    """The server answered 4xx: this request is wrong for it. Never retried."""


class RemoteServerError(RemoteError):
    """The server answered 5xx (other than 503): it failed. Not retried."""


class RemoteProtocolError(RemoteError):
    """The server's answer is not a valid Open Inference Protocol message, or not one that
    fits the model's outputs."""


class OffloadError(EdgeInferError):
    """The offloader cannot place a request."""


class NoPlacementError(OffloadError):
    """There is nowhere to run this request: no local model and no reachable remote."""
