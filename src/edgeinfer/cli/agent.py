"""``edgeinfer agent``: keep this device's model up to date from a TUF repository."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def agent(
    repo_url: str = typer.Option(..., "--repo-url", help="Base URL of the repository."),
    state_dir: Path = typer.Option(..., "--state-dir", help="Where the agent keeps its state."),
    root: Path | None = typer.Option(
        None, "--root", help="Trusted root.json, to provision the first run."
    ),
    interval: float = typer.Option(60.0, help="Seconds between update cycles."),
    once: bool = typer.Option(False, "--once", help="Run one cycle and exit."),
    device_id: str | None = typer.Option(None, help="Stable device id (default: generated)."),
    report_url: str | None = typer.Option(None, help="POST status.json here after each cycle."),
    model: str | None = typer.Option(None, help="Model name (default: the installed one)."),
    channel: str = typer.Option("stable", help="Release channel to follow."),
    version_floor: int = typer.Option(0, min=0, help="Never install a version below this."),
    min_free_mb: float = typer.Option(32.0, min=0, help="MB of disk that must stay free."),
    read_timeout: float = typer.Option(
        30.0,
        min=0.1,
        help="Seconds without data before a download is abandoned (it resumes next cycle).",
    ),
    cycle_timeout: float = typer.Option(
        3600.0,
        "--cycle-timeout",
        min=1.0,
        help="Seconds one update cycle may spend on the network; downloads resume next cycle.",
    ),
    min_rate: float = typer.Option(
        1024.0,
        "--min-rate",
        min=0.0,
        help="Bytes/s a transfer must average over 30 s, or it is abandoned (0: no minimum).",
    ),
    fleet: str | None = typer.Option(
        None,
        "--fleet",
        help="Fleet service URL: enroll on first start, then a signed report every cycle.",
    ),
    enroll_token: str | None = typer.Option(
        None,
        "--enroll-token",
        envvar="EDGEINFER_ENROLL_TOKEN",
        help="The fleet's enrollment token, needed until enrolled (shows in `ps`: prefer "
        "EDGEINFER_ENROLL_TOKEN or --enroll-token-file).",
    ),
    enroll_token_file: Path | None = typer.Option(
        None, "--enroll-token-file", help="A file holding the enrollment token on one line."
    ),
    rollout_key: Path | None = typer.Option(
        None,
        "--rollout-key",
        help="The fleet's rollout public key, pinned: follow its signed rollout documents.",
    ),
) -> None:
    """Refresh signed metadata, install updates into the idle slot, health-check, commit.

    --once: one cycle; exit 0 with or without an update, 2 if the agent cannot work at all.
    With --fleet, a fleet that is down or refuses never fails a cycle: reports wait on disk.
    """
    import json
    import threading

    from edgeinfer.deliver.agent import Agent, AgentConfig
    from edgeinfer.deliver.download import DownloadConfig

    if enroll_token_file is not None and not enroll_token:
        from edgeinfer.cli.serve import _read_tokens

        enroll_token = _read_tokens(enroll_token_file, "--enroll-token-file")[0]

    config = AgentConfig(
        repo_url=repo_url,
        state_dir=state_dir,
        root=root,
        model=model,
        channel=channel,
        device_id=device_id,
        version_floor=version_floor,
        min_free_bytes=int(min_free_mb * 1e6),
        report_url=report_url,
        fleet_url=fleet,
        enroll_token=enroll_token,
        rollout_key=rollout_key,
        cycle_timeout=cycle_timeout,
        download=DownloadConfig(read_timeout=read_timeout, min_rate=min_rate),
    )
    the_agent = Agent(config)
    console = Console()
    if once:
        result = the_agent.run_once()
        console.print_json(json.dumps(result.to_dict()))
        return
    stop = threading.Event()
    try:
        while not stop.is_set():
            r = the_agent.run_once()
            line = f"{r.finished_at} {r.result}"
            if r.to_version is not None:
                line += f" v{r.from_version} -> v{r.to_version}"
            if r.via:
                line += f" via {r.via} ({r.bytes_downloaded:,} bytes)"
            if r.reason:
                line += f": {r.reason}"
            console.print(line, highlight=False)
            stop.wait(interval)
    except KeyboardInterrupt:
        stop.set()


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
