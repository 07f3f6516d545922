"""``edgeinfer fleet rollout``: start, status, pause, resume and abort staged rollouts.

Talks to a running fleet service with the admin token, as the other ``fleet`` commands
do (``--fleet`` / ``--admin-token``, or ``EDGEINFER_FLEET_URL`` / ``EDGEINFER_ADMIN_TOKEN``).
Shares are written as percents (``10%``), durations with a unit (``90s``, ``10m``, ``2h``).
Output fits 80 columns; ``status --json`` prints what the service answered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from edgeinfer.cli._fleet_common import _FLEET, _TOKEN, _TOKEN_FILE, _admin_token, _call, _cell
from edgeinfer.errors import InputError

__all__ = [
    "parse_duration",
    "parse_share",
    "parse_stages",
    "register_rollout",
    "render",
    "table",
]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_share(text: str, option: str) -> float:
    """``"10%"`` -> 0.10 (a bare number is a percent too)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%?\s*", text)
    if match is None or float(match.group(1)) > 100:
        raise InputError(f"{option} {text!r}: expected a percentage such as 10%")
    return float(match.group(1)) / 100.0


def parse_duration(text: str, option: str) -> float:
    """``"10m"`` -> 600.0 seconds (s, m, h, d; a bare number is seconds)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise InputError(f"{option} {text!r}: expected a duration such as 90s, 10m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_stages(text: str) -> list[float]:
    """``"5,25,100"`` -> [5.0, 25.0, 100.0]: increasing percents, the last 100."""
    try:
        stages = [float(part.strip().rstrip("%")) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--stages {text!r}: expected percents such as 5,25,100") from None
    if not stages or stages != sorted(set(stages)) or stages[0] <= 0 or stages[-1] != 100:
        raise InputError(
            f"--stages {text!r}: expected increasing percents ending at 100, e.g. 5,25,100"
        )
    return stages


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:g}%"


def render(r: dict[str, Any]) -> str:
    """A rollout as the status command prints it (80 columns)."""
    stages = " -> ".join(f"{s:g}%" for s in r["stages"])
    lines = [
        f"{_cell(r['model'], 40)} {r['version']}: {r['state']}, stage {r['stage'] + 1} of "
        f"{len(r['stages'])} ({r['share']:g}% of devices)",
        f"stages      {_cell(stages, 66)}",
        f"devices     {r['ok']} ok, {r['failed']} failed",
        f"halts on    failure > {_pct(r['max_failure'])} with >= {r['min_devices']} "
        f"reporting; p95 +{_pct(r['max_latency_regression'])} "
        f"vs {r['previous_version'] if r['previous_version'] is not None else '-'}",
        f"soak        {r['soak_s']:g} s per stage (stage since {r['stage_started_at']})",
    ]
    if r.get("target"):
        lines.append(
            f"target      sha256 {r['target']['sha256'][:16]}... {r['target']['length']} B"
        )
    if r["halt_rule"]:
        detail = r["halt_detail"] or {}
        figures = ", ".join(f"{k} {v}" for k, v in detail.items() if k != "stage")
        lines.append(f"halted by   {r['halt_rule']}: {_cell(figures, 52)}")
    for e in r.get("events", [])[-10:]:
        lines.append(f"  {e['at']}  {e['kind']:<10} stage {e['stage'] + 1}")
    return "\n".join(lines)


def table(found: list[dict[str, Any]]) -> str:
    """``fleet rollouts``: one line per model (78 columns)."""
    columns: list[tuple[str, int]] = [
        ("MODEL", 18),
        ("VER", 5),
        ("STATE", 8),
        ("STAGE", 9),
        ("OK", 6),
        ("FAILED", 6),
        ("HALTED BY", 20),
    ]
    lines = [" ".join(f"{title:<{w}}" for title, w in columns).rstrip()]
    for r in found:
        stage = f"{r['stage'] + 1}/{len(r['stages'])} {r['share']:g}%"
        cells = [r["model"], r["version"], r["state"], stage, r["ok"], r["failed"], r["halt_rule"]]
        lines.append(
            " ".join(
                f"{_cell(c, w):<{w}}" for c, (_, w) in zip(cells, columns, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def register_rollout(fleet_app: typer.Typer) -> None:
    @fleet_app.command("rollouts")
    def listing(
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
        as_json: bool = typer.Option(False, "--json", help="Print the service's JSON."),
    ) -> None:
        """List the newest rollout of every model: state, stage, counts, halt rule."""
        found = _call(fleet, _admin_token(admin_token, admin_token_file), "GET", "/v1/rollouts")
        typer.echo(json.dumps(found, indent=2) if as_json else table(found))

    rollout_app = typer.Typer(
        help="Staged rollouts that halt themselves on failures or slower p95.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    fleet_app.add_typer(rollout_app, name="rollout")

    @rollout_app.command("start")
    def start(
        model: str = typer.Argument(..., help="The model's name."),
        version: int = typer.Argument(..., min=0, help="The version to roll out."),
        stages: str = typer.Option("5,25,100", help="Percents of the devices, ending at 100."),
        max_failure: str = typer.Option(
            "10%", help="Halt when more than this share rolls back or fails its gate."
        ),
        min_devices: int = typer.Option(
            20, min=1, help="Devices reporting on the version before a halt can trip."
        ),
        max_latency_regression: str | None = typer.Option(
            None, help="Halt when p95 latency is this much above the previous version's."
        ),
        soak: str = typer.Option("0s", help="Time each stage lasts at least (90s, 10m, 2h)."),
        sha256: str | None = typer.Option(None, help="The TUF target's sha256, to pin it."),
        length: int | None = typer.Option(None, min=0, help="The TUF target's length (bytes)."),
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
    ) -> None:
        """Start a staged rollout of MODEL VERSION.

        Publish the version held first (edgeinfer publish --rollout 0%); the fleet then
        lets it through stage by stage and halts it by itself.
        """
        if (sha256 is None) != (length is None):
            raise InputError("--sha256 and --length go together (the TUF target's)")
        body: dict[str, Any] = {
            "model": model,
            "version": version,
            "stages": parse_stages(stages),
            "max_failure": parse_share(max_failure, "--max-failure"),
            "min_devices": min_devices,
            "soak_s": parse_duration(soak, "--soak"),
        }
        if max_latency_regression is not None:
            body["max_latency_regression"] = parse_share(
                max_latency_regression, "--max-latency-regression"
            )
        if sha256 is not None:
            body["target"] = {"sha256": sha256.lower(), "length": length}
        token = _admin_token(admin_token, admin_token_file)
        typer.echo(render(_call(fleet, token, "POST", "/v1/rollouts", body)))

    @rollout_app.command("status")
    def status(
        model: str = typer.Argument(..., help="The model's name."),
        fleet: str = _FLEET,
        admin_token: str | None = _TOKEN,
        admin_token_file: Path | None = _TOKEN_FILE,
        as_json: bool = typer.Option(False, "--json", help="Print the service's JSON."),
    ) -> None:
        """Show the newest rollout of MODEL: its stage, counts, and why it halted."""
        token = _admin_token(admin_token, admin_token_file)
        found = _call(fleet, token, "GET", f"/v1/rollouts/{quote(model, safe='')}")
        typer.echo(json.dumps(found, indent=2) if as_json else render(found))

    def change(kind: str, doc: str) -> None:
        def command(
            model: str = typer.Argument(..., help="The model's name."),
            fleet: str = _FLEET,
            admin_token: str | None = _TOKEN,
            admin_token_file: Path | None = _TOKEN_FILE,
        ) -> None:
            token = _admin_token(admin_token, admin_token_file)
            route = f"/v1/rollouts/{quote(model, safe='')}/{kind}"
            typer.echo(render(_call(fleet, token, "POST", route)))

        command.__doc__ = doc
        rollout_app.command(kind)(command)

    change("pause", "Stop promoting MODEL's rollout (devices already in stay).")
    change("resume", "Resume MODEL's paused rollout (its soak time starts again).")
    change("abort", "Abort MODEL's rollout: the document lets no device through.")
