"""``edgeinfer publish``: add a bundle (and deltas) to a TUF repository, or re-sign it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def _percent(text: str) -> float:
    from edgeinfer.deliver.errors import PublishError

    value = text.strip().removesuffix("%")
    try:
        pct = float(value)
    except ValueError:
        raise PublishError(f"--rollout {text!r}: expected a percentage such as 10%") from None
    if not 0.0 <= pct <= 100.0:
        raise PublishError(f"--rollout {text!r}: must be between 0% and 100%")
    return pct


def publish(
    bundle: Path | None = typer.Argument(
        None, help="Bundle directory or packed .tar (omit with --refresh)."
    ),
    repo: Path = typer.Option(..., "--repo", help="Repository directory (created if missing)."),
    keys: Path = typer.Option(..., "--keys", help="Key directory (outside the repository)."),
    channel: str = typer.Option("stable", help="Release channel of this version."),
    rollout: str = typer.Option("100%", help="Share of devices that get it, e.g. 10%."),
    min_agent_version: str | None = typer.Option(
        None, help="Oldest agent version that may install it, e.g. 0.1.0."
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Only re-sign the timestamp (and expiring metadata)."
    ),
    allow_older: bool = typer.Option(
        False,
        "--allow-older",
        help="Publish a version older than the model's latest (devices never move back to it).",
    ),
) -> None:
    """Publish a bundle to the repository, with deltas from earlier versions."""
    from edgeinfer.deliver.errors import PublishError
    from edgeinfer.deliver.publish import Publisher

    console = Console()
    pub = Publisher(repo, keys)
    if refresh:
        if bundle is not None:
            raise PublishError("--refresh re-signs the repository; do not name a bundle with it")
        done = pub.refresh()
        console.print(f"[green]re-signed[/] {', '.join(done)} in {repo}")
        return
    if bundle is None:
        raise PublishError("name a BUNDLE to publish (or pass --refresh)")
    result = pub.publish(
        bundle,
        channel=channel,
        rollout=_percent(rollout),
        min_agent_version=min_agent_version,
        allow_older=allow_older,
    )
    if not result.changed:
        console.print(
            f"{result.model} v{result.version} already published, nothing to do "
            f"(channels {', '.join(result.channels)}, rollout {result.rollout:g}%; "
            f"targets metadata stays at version {result.targets_version})",
            highlight=False,
        )
        return
    verb = "published" if result.created else "updated rollout of"
    console.print(
        f"[green]{verb}[/] {result.model} v{result.version} -> {result.path} "
        f"({result.length / 1e3:.1f} kB, channels {', '.join(result.channels)}, "
        f"rollout {result.rollout:g}%)"
    )
    for d in result.deltas:
        console.print(
            f"  delta from v{d.from_version}: {d.size / 1e3:.1f} kB "
            f"({d.size / result.length:.1%} of the full bundle, {d.method})"
        )
    console.print(f"targets metadata version {result.targets_version}; root at {repo}/metadata")


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
