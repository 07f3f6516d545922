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
        ├── QueueFull            503 UNAVAILABLE        backpressure: the model's queue is full
        └── QueueTimeout         503 DEADLINE_EXCEEDED  waited longer than the queue timeout

:func:`error_status` maps any exception: a ``ServeError`` by its own status, an
``InputError`` (including the protocol's ``ProtocolError``) to 400, a runtime failure that
ONNX Runtime blames on the input (``InvalidArgument``) to 400, anything else to 500.
REST and gRPC both call it, so an error reads the same on both.
"""

from __future__ import annotations

from typing import NamedTuple

from edgeinfer.errors import BackendError, EdgeInferError, InputError

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
]


class ServeError(EdgeInferError):
    """An error the server answers with a specific status."""

    status: int = 500
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode member name


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
