"""What every ``edgeinfer fleet`` command shares: the fleet's URL and admin token options,
one operator request with its one-line errors, and a table cell that fits its column.

Below both ``cli/fleet.py`` and ``cli/fleet_rollout.py``, which register the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["_FLEET", "_TOKEN", "_TOKEN_FILE", "_admin_token", "_call", "_cell"]

_FLEET = typer.Option(
    ...,
    "--fleet",
    envvar="EDGEINFER_FLEET_URL",
    help="The fleet service's URL (or EDGEINFER_FLEET_URL).",
)
_TOKEN = typer.Option(
    None,
    "--admin-token",
    envvar="EDGEINFER_ADMIN_TOKEN",
    help="The admin token (shows in `ps`: prefer EDGEINFER_ADMIN_TOKEN or --admin-token-file).",
)
_TOKEN_FILE = typer.Option(
    None,
    "--admin-token-file",
    envvar="EDGEINFER_ADMIN_TOKEN_FILE",
    help="File holding the admin token (one a line, '#' comments).",
)


def _admin_token(token: str | None, token_file: Path | None) -> str:
    from edgeinfer.cli.serve import _read_tokens
    from edgeinfer.errors import InputError

    if token:
        return token
    if token_file is not None:
        return _read_tokens(token_file, "--admin-token-file")[0]
    raise InputError(
        "pass the fleet's admin token: --admin-token-file FILE, EDGEINFER_ADMIN_TOKEN, "
        "or --admin-token"
    )


def _call(fleet: str, token: str, method: str, route: str, body: Any = None) -> Any:
    """One operator request; a refusal or an unreachable fleet is one error line."""
    import httpx

    from edgeinfer.errors import InputError
    from edgeinfer.fleet.errors import FleetUnavailable, refusal

    base = fleet.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise InputError(f"--fleet {fleet!r}: expected http:// or https://")
    try:
        answer = httpx.request(
            method,
            base + route,
            json=body,
            headers={"authorization": f"Bearer {token}"},
            timeout=30.0,
        )
    except httpx.HTTPError as exc:
        raise FleetUnavailable(f"cannot reach the fleet at {base}: {exc}") from None
    try:
        data = answer.json()
    except ValueError:
        data = None
    if answer.status_code >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        message = message or f"HTTP {answer.status_code}"
        if answer.status_code >= 500:
            raise FleetUnavailable(f"{base}: {message}")
        raise refusal(answer.status_code, f"{base}: {message}")
    return data


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "~"
