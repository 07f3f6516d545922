"""The fleet dashboard's sessions: a cookie MACed with the admin token, and same-origin POSTs.

The cookie never holds the token itself: it is an expiry and a nonce MACed with the admin
token (HMAC-SHA256), so any replica that knows the token accepts it, and changing the token
ends every session. Pages also take ``Authorization: Bearer <admin token>``. A POST must
come from the dashboard's own origin (``Origin`` / ``Sec-Fetch-Site``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = [
    "COOKIE",
    "SESSION_S",
    "cookie_ok",
    "local_path",
    "same_origin",
    "session_cookie",
    "signed_in",
    "token_ok",
]

COOKIE = "edgeinfer_fleet_session"
SESSION_S = 12 * 3600  # seconds a login lasts
_SESSION_CONTEXT = b"edgeinfer-fleet-session-v1"


def _mac(token: str, expiry: int, nonce: str) -> str:
    message = _SESSION_CONTEXT + f"|{expiry}|{nonce}".encode()
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    """A session value for ``token``: ``EXPIRY.NONCE.MAC`` (the token is not in it)."""
    expiry = int(now if now is not None else time.time()) + SESSION_S
    nonce = secrets.token_hex(12)
    return f"{expiry}.{nonce}.{_mac(token, expiry, nonce)}"


def token_ok(token: str, tokens: tuple[str, ...]) -> bool:
    found = False
    for candidate in tokens:  # no early exit: timing tells nothing
        found |= hmac.compare_digest(token.encode("utf-8"), candidate.encode("utf-8"))
    return found


def cookie_ok(value: str, tokens: tuple[str, ...]) -> bool:
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) < time.time():
        return False
    expiry, nonce, mac = int(parts[0]), parts[1], parts[2]
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(mac.encode(), _mac(candidate, expiry, nonce).encode())
    return found


def signed_in(request: Request, tokens: tuple[str, ...]) -> bool:
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and cookie_ok(cookie, tokens):
        return True
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip()) and token_ok(token.strip(), tokens)


def same_origin(request: Request) -> bool:
    """A POST from the dashboard's own pages (browsers say where a form came from)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        # the host, not the scheme: behind a TLS-terminating proxy this side sees http
        return urlsplit(origin).netloc == request.headers.get("host", "")
    return True  # neither header: not a browser, so not a forged cross-site form


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"
