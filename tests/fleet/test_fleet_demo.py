"""The demo's fleet stage: a rollout that promotes, one that halts itself, in 80 columns."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from edgeinfer.demo import STAGES, run_demo
from edgeinfer.fleet import rollouts
from edgeinfer.fleet.store import Rollout, StoreConfig, open_store


def test_the_fleet_stage_promotes_a_good_release_and_halts_a_bad_one(tmp_path: Path) -> None:
    assert STAGES[-1] == "edgeinfer.demo.fleet"
    out = io.StringIO()
    ctx = run_demo(tmp_path, stages=["fleet"], fast=True, console=Console(file=out, width=80))
    shown = ctx.artifacts["fleet"]
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "-> promoted" in text and "-> done" in text and "-> halted" in text, text
    said = " ".join(text.split())
    assert "halted: failure share 75.0% (3 of 4 reporting devices failed)" in said, text
    assert "now lets 0 of the 11 on v2 through" in said, text
    assert "edgeinfer fleet serve --db fleet.db --admin-token-file admin-token" in said
    assert (shown["state"], shown["halt_rule"]) == ("halted", "failure-share")
    # the bad release reached the first stage's devices and nobody else
    assert shown["ever_installed_bad"] == 4 < shown["devices"]

    # what the demo printed is what its fleet database holds
    store = open_store(StoreConfig(str(shown["db"])))
    try:
        with store.session() as session:
            found = {r.version: r for r in session.query(Rollout).filter_by(model="digits")}
            v2 = rollouts.summary(session, "digits")  # the newest: v3
            assert v2 is not None and v2["version"] == 3
            assert (found[2].state, found[2].stage) == ("done", 1)
            assert (found[3].state, found[3].stage) == ("halted", 0)
    finally:
        store.close()
    assert shown["admin_token_file"].stat().st_mode & 0o077 == 0
