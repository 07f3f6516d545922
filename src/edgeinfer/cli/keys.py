"""``edgeinfer keys init|rotate``: the publisher's signing keys for a TUF repository."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

keys_app = typer.Typer(
    help="Create and rotate the signing keys of a model repository.", no_args_is_help=True
)


@keys_app.command("init")
def init(
    keys: Path = typer.Option(..., "--keys", help="Key directory to create (keep it private)."),
    threshold: list[str] = typer.Option(
        [], "--threshold", help="ROLE=N: N keys, all needed to sign ROLE (repeatable)."
    ),
    force: bool = typer.Option(False, help="Replace keys that already exist (dangerous)."),
) -> None:
    """Generate ed25519 keys for the root, targets, snapshot and timestamp roles."""
    from edgeinfer.deliver.keys import ROLES, KeyStore, parse_thresholds

    store = KeyStore.init(keys, parse_thresholds(threshold), force=force)
    console = Console()
    for role in ROLES:
        ids = ", ".join(k.keyid[:12] for k in store.key_infos(role))
        console.print(f"{role:>9}: threshold {store.thresholds[role]}, keys {ids}")
    console.print(
        f"[green]keys written to {store.path}[/] (private keys are owner-only; keep the root "
        "keys offline and never inside the repository directory)"
    )


@keys_app.command("rotate")
def rotate(
    role: str = typer.Argument(..., help="root, targets, snapshot or timestamp."),
    keys: Path = typer.Option(..., "--keys", help="Key directory."),
    repo: Path | None = typer.Option(
        None, "--repo", help="Repository to re-sign now (else: at the next publish)."
    ),
) -> None:
    """Replace a role's keys; devices follow through a new root signed by old and new keys."""
    from edgeinfer.deliver.keys import KeyStore

    store = KeyStore.open(keys)
    new = store.rotate(role)
    console = Console()
    console.print(f"[green]{role}[/]: new key(s) {', '.join(k[:12] for k in new)}")
    if repo is None:
        console.print("the repository picks the new keys up at the next 'edgeinfer publish'")
        return
    from edgeinfer.deliver.publish import Publisher

    done = Publisher(repo, store).refresh()
    console.print(f"re-signed {repo}: {', '.join(done)}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
