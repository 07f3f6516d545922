"""Bearer tokens: one set for inference and metadata, a separate set for repository control.

Health endpoints stay open (probes carry no tokens). With no inference tokens configured,
inference is open; with no admin tokens, repository control (load, unload) is disabled
altogether. Reading the repository index changes nothing and needs only what inference
needs, as on Triton. An admin token also works for inference. Tokens are compared in
constant time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from edgeinfer.serve.errors import Forbidden, Unauthorized

__all__ = ["Auth", "bearer_token"]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(token: str, allowed: tuple[str, ...]) -> bool:
    found = False
    for candidate in allowed:  # no early exit: timing does not tell which token matched
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


@dataclass(frozen=True)
class Auth:
    """Checks ``Authorization`` headers (REST) and metadata (gRPC)."""

    tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        return not self.tokens

    def check(self, authorization: str | None, *, admin: bool = False) -> None:
        """Raise :class:`Unauthorized`/:class:`Forbidden` unless the header allows the call."""
        if admin and not self.admin_tokens:
            raise Forbidden(
                "repository control is disabled on this server; start it with an admin "
                "token (--admin-token) to load and unload models"
            )
        if not admin and not self.tokens:
            return
        token = bearer_token(authorization)
        if token is None:
            what = "an admin" if admin else "a"
            raise Unauthorized(
                f"this endpoint needs {what} bearer token (Authorization: Bearer ...)"
            )
        if _matches(token, self.admin_tokens):
            return
        if admin:
            if _matches(token, self.tokens):
                raise Forbidden("this token may run inference but not control the repository")
            raise Unauthorized("invalid admin token")
        if not _matches(token, self.tokens):
            raise Unauthorized("invalid bearer token")
