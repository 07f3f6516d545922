"""``edgeinfer fleet``: the fleet service and the operator's commands against it.

``fleet serve`` runs the service; ``fleet token create``, ``fleet devices``, ``fleet device``
and ``fleet revoke`` talk to a running one over HTTP with the admin token (``--fleet`` /
``--admin-token``, or ``EDGEINFER_FLEET_URL`` / ``EDGEINFER_ADMIN_TOKEN``). Tables fit 80
columns; ``--json`` prints what the service answered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from edgeinfer.cli._fleet_common import _FLEET, _TOKEN, _TOKEN_FILE, _admin_token, _call, _cell

_DEVICE_PAGE = 1000  # devices asked for at a time: ~20 ms of the service's time a page

__all__ = ["register"]


def _table(devices: list[dict[str, Any]]) -> str:
    columns: list[tuple[str, str, int]] = [  # 78 columns with the spaces between
        ("ID", "id", 22),
        ("MODEL", "model", 16),
        ("VER", "version", 5),
        ("STATE", "state", 11),
        ("LAST REPORT", "last_report_at", 20),
    ]
    lines = [" ".join(f"{title:<{w}}" for title, _, w in columns).rstrip()]
    for d in devices:
        lines.append(" ".join(f"{_cell(d.get(k), w):<{w}}" for _, k, w in columns).rstrip())
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    fleet_app = typer.Typer(
        help="The fleet control plane: the service, enrollment tokens, devices.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    token_app = typer.Typer(help="Enrollment tokens.", no_args_is_help=True, rich_markup_mode=None)
    fleet_app.add_typer(token_app, name="token")
    app.add_typer(fleet_app, name="fleet")
    from edgeinfer.cli.fleet_rollout import register_rollout

    register_rollout(fleet_app)

    @fleet_app.command("serve")
    def serve(
        db: str = typer.Option(
            "fleet.db",
            "--db",
            help="Database: a SQLite file path (default fleet.db) or postgresql://USER@HOST/DB.",
        ),
        host: str = typer.Option("127.0.0.1", help="Address to bind."),
        port: int = typer.Option(8700, help="Port (0: any free port)."),
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
        max_skew: float = typer.Option(
            300.0, help="Seconds a report may be dated ahead of this service's clock."
        ),
        body_timeout: float = typer.Option(
            30.0, min=0.1, help="Seconds a client may take to send a request body (then 408)."
        ),
        header_timeout: float = typer.Option(
            30.0,
            help="Seconds a client may take to send a request's line and headers, from "
            "connecting (or, on a kept-alive connection, from its first byte); then 408.",
        ),
        max_connections: int = typer.Option(
            1000, help="Connections served at once; more are answered 503 (0: no cap)."
        ),
        rollout_key: Path | None = typer.Option(
            None,
            "--rollout-key",
            help="The fleet's Ed25519 rollout key (PEM; made if missing). Default: "
            "DB.rollout-key.pem beside a SQLite --db; replicas share one file.",
        ),
        rollout_tick: float = typer.Option(
            5.0, min=0.05, help="Seconds between decisions on running rollouts (besides reports)."
        ),
    ) -> None:
        """Run the fleet service.

        Devices enroll and report here; operators list, inspect and revoke them.

        Prints 'fleet service on http://HOST:PORT' once the database is ready.
        """
        from edgeinfer.fleet.api import FleetConfig
        from edgeinfer.fleet.ingest import Limits
        from edgeinfer.fleet.rollout_api import RolloutConfig
        from edgeinfer.fleet.server import ServerConfig, run_fleet
        from edgeinfer.fleet.store import StoreConfig

        token = _admin_token(admin_token, admin_token_file)
        if rollout_key is None and "://" not in db:
            rollout_key = Path(db).expanduser().with_name(Path(db).name + ".rollout-key.pem")
        config = ServerConfig(
            store=StoreConfig(db),
            fleet=FleetConfig(
                admin_tokens=(token,),
                limits=Limits(max_skew_s=max_skew),
                body_timeout_s=body_timeout,
                rollouts=RolloutConfig(key_file=rollout_key, tick_s=rollout_tick),
            ),
            host=host,
            port=port,
            header_timeout_s=header_timeout,
            max_connections=max_connections or None,
        )
        run_fleet(config)

    @token_app.command("create")
    def token_create(
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
        uses: int = typer.Option(1, min=1, help="Enrollments the token allows."),
    ) -> None:
        """Make an enrollment token.

        Prints the token alone on stdout (its id and uses on stderr).
        """
        made = _call(
            fleet, _admin_token(admin_token, admin_token_file), "POST", "/v1/tokens", {"uses": uses}
        )
        typer.echo(made["token"])
        typer.echo(f"token {made['id']}: good for {made['uses']} enrollment(s)", err=True)

    @fleet_app.command("devices")
    def devices(
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
        as_json: bool = typer.Option(False, "--json", help="Print the service's JSON."),
    ) -> None:
        """List the devices.

        Each with its id, model, active version, state and last report time.
        """
        token = _admin_token(admin_token, admin_token_file)
        found: list[Any] = []
        query = f"/v1/devices?limit={_DEVICE_PAGE}"
        while True:  # the service answers a page at a time, each after the last one's id
            page = _call(fleet, token, "GET", query)
            found.extend(page)
            if len(page) < _DEVICE_PAGE:
                break
            query = f"/v1/devices?limit={_DEVICE_PAGE}&after={quote(page[-1]['id'], safe='')}"
        typer.echo(json.dumps(found, indent=2) if as_json else _table(found))

    @fleet_app.command("device")
    def device(
        device_id: str = typer.Argument(..., help="The device's id (d-...)."),
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
        as_json: bool = typer.Option(False, "--json", help="Print the service's JSON."),
    ) -> None:
        """Show one device.

        What it runs, its hardware, its recent reports, and the merged latency of
        its model version on its hardware class.
        """
        token = _admin_token(admin_token, admin_token_file)
        d = _call(fleet, token, "GET", f"/v1/devices/{quote(device_id, safe='')}")
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        for key in ("id", "model", "version", "state", "reason", "hardware_class"):
            typer.echo(f"{key:<15} {_cell(d.get(key), 64)}")
        for key in ("bundle_sha256", "enrolled_at", "last_report_at", "revoked_at", "reports"):
            typer.echo(f"{key:<15} {_cell(d.get(key), 64)}")
        for s in d.get("fleet_latency", []):
            figures = "  ".join(f"{k} {s[k]:.3g}" for k in ("p50", "p95", "p99") if k in s)
            typer.echo(f"{_cell(s['metric'], 15):<15} n={s['n']}  {figures}")
        for r in d.get("recent_reports", [])[:10]:
            typer.echo(f"  #{r['counter']:<8} {r['received_at']}  {_cell(r['result'], 12)}")

    @fleet_app.command("revoke")
    def revoke(
        device_id: str = typer.Argument(..., help="The device's id (d-...)."),
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
    ) -> None:
        """Revoke a device.

        Its reports are refused from now on, and its key cannot enroll again.
        """
        from urllib.parse import quote

        token = _admin_token(admin_token, admin_token_file)
        done = _call(fleet, token, "POST", f"/v1/devices/{quote(device_id, safe='')}/revoke")
        typer.echo(f"{done['id']} revoked at {done['revoked_at']}")
        sys.stdout.flush()
