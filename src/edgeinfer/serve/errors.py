"""The server's errors, and the one place where every error gets its HTTP and gRPC status.

::

    EdgeInferError
    └── ServeError               carries ``status`` (HTTP) and ``grpc_code``
        ├── BadRequest           400 INVALID_ARGUMENT   a request the server refuses to read
        ├── Unauthorized         401 UNAUTHENTICATED    no or wrong bearer token
        ├── Forbidden            403 PERMISSION_DENIED  token not allowed here / disabled
        ├── ModelNotFound        404 NOT_FOUND          no such model or version
        ├── ModelLoadError       400 INVALID_ARGUMENT   a model that cannot be loaded
        ├── ModelNotReady        503 UNAVAILABLE        known but not loaded (or unloading)
        ├── QueueFull            503 UNAVAILABLE        backpressure: the queue is full, or the
        │                                               request could not run within its timeout
        └── QueueTimeout         503 DEADLINE_EXCEEDED  waited longer than the queue timeout

:func:`error_status` maps any exception: a ``ServeError`` by its own status, an
``InputError`` (including the protocol's ``ProtocolError``) to 400 (415 for a request
body in a content coding the server cannot decode), a runtime failure that
ONNX Runtime blames on the input (``InvalidArgument``) to 400, anything else to 500.
REST and gRPC both call it, so an error reads the same on both. A 503 also says when to
come back: :func:`retry_after` (seconds), sent as ``Retry-After`` / ``Retry-After-Ms`` over REST
and as ``retry-after-ms`` trailing metadata over gRPC.
"""

from __future__ import annotations

from typing import NamedTuple

from edgeinfer.errors import BackendError, EdgeInferError, InputError
from edgeinfer.protocol.coding import UnsupportedCoding

__all__ = [
    "BadRequest",
    "ErrorStatus",
    "Forbidden",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "QueueFull",
    "QueueTimeout",
    "ServeError",
    "Unauthorized",
    "error_status",
    "retry_after",
]

# A model that is loading or unloading is usually back within this many seconds.
NOT_READY_RETRY_S = 1.0


class ServeError(EdgeInferError):
    """An error the server answers with a specific status."""

    status: int = 500
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode member name
    retry_after_s: float | None = None  # seconds a client should wait before retrying

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class BadRequest(ServeError):
    status, grpc_code = 400, "INVALID_ARGUMENT"


class Unauthorized(ServeError):
    status, grpc_code = 401, "UNAUTHENTICATED"


class Forbidden(ServeError):
    status, grpc_code = 403, "PERMISSION_DENIED"


class ModelNotFound(ServeError):
    status, grpc_code = 404, "NOT_FOUND"


class ModelLoadError(ServeError):
    status, grpc_code = 400, "INVALID_ARGUMENT"


class ModelNotReady(ServeError):
    status, grpc_code = 503, "UNAVAILABLE"
    retry_after_s = NOT_READY_RETRY_S


class QueueFull(ServeError):
    status, grpc_code = 503, "UNAVAILABLE"


class QueueTimeout(ServeError):
    status, grpc_code = 503, "DEADLINE_EXCEEDED"


class ErrorStatus(NamedTuple):
    status: int  # HTTP status code
    grpc_code: str  # grpc.StatusCode member name
    message: str


def error_status(exc: BaseException) -> ErrorStatus:
    """The HTTP status, gRPC code and message for any exception (the one mapping)."""
    if isinstance(exc, ServeError):
        return ErrorStatus(exc.status, exc.grpc_code, str(exc))
    if isinstance(exc, UnsupportedCoding):  # RFC 9110: a Content-Encoding it cannot undo
        return ErrorStatus(415, "INVALID_ARGUMENT", str(exc))
    if isinstance(exc, InputError):
        return ErrorStatus(400, "INVALID_ARGUMENT", str(exc))
    if isinstance(exc, BackendError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else ""
        if cause == "InvalidArgument":  # ONNX Runtime rejected the input itself
            return ErrorStatus(400, "INVALID_ARGUMENT", str(exc))
        return ErrorStatus(500, "INTERNAL", str(exc))
    if isinstance(exc, EdgeInferError):
        return ErrorStatus(500, "INTERNAL", str(exc))
    return ErrorStatus(500, "INTERNAL", f"internal server error ({type(exc).__name__})")


def retry_after(exc: BaseException) -> float | None:
    """Seconds a client should wait before sending the request again (503s), else ``None``."""
    if isinstance(exc, ServeError) and exc.status == 503:
        return exc.retry_after_s
    return None
