"""The protocol's one error: a message on the wire that does not follow the protocol.

``ProtocolError`` is an :class:`~edgeinfer.errors.InputError`: whoever sent the message (a
client to the server, or a server to the client) sent something malformed, and the message
says what was wrong and what was expected. The server answers it with HTTP 400 / gRPC
``INVALID_ARGUMENT``; the client raises it to its caller.
"""

from __future__ import annotations

from edgeinfer.errors import InputError

__all__ = ["ProtocolError"]


class ProtocolError(InputError):
    """A request or response that is not a valid Open Inference Protocol message."""
