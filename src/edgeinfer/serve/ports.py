"""Binding the server's ports: one-line errors that name the port and what to do.

Below both the runner (``server.py``) and the gRPC listener, so neither imports the other
to share them.
"""

from __future__ import annotations

import errno

from edgeinfer.errors import InputError
from edgeinfer.serve._grpc_listener import port_is_free

__all__ = ["bind_error", "check_grpc_port", "reason"]


def bind_error(what: str, host: str, port: int, why: str) -> InputError:
    """The one-line error for a port that cannot be bound, with what to do about it."""
    hint = {
        "REST": "choose another --port (0: any free port)",
        "gRPC": "choose another --grpc-port (0: any free port, -1: no gRPC)",
    }[what]
    return InputError(f"cannot listen on {what} port {port} of {host}: {why}; {hint}")


def reason(exc: OSError) -> str:
    """Why a bind failed, in words."""
    if exc.errno == errno.EADDRINUSE:
        return "it is already in use"
    return exc.strerror or str(exc)


def check_grpc_port(host: str, port: int) -> None:
    """Raise ``InputError`` naming the gRPC port if something listens there already."""
    exc = port_is_free(host, port)
    if exc is not None:
        raise bind_error("gRPC", host, port, reason(exc)) from None
