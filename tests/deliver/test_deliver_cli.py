"""``edgeinfer keys``, ``edgeinfer publish`` and ``edgeinfer agent`` end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deliver_support import agent_cli, committed, make_bundle, serve

from edgeinfer.cli.main import main


def cli(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.slow
def test_keys_publish_agent(
    tmp_path: Path, make_model: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    assert cli("keys", "init", "--keys", str(keys), "--threshold", "root=2") == 0
    assert "root: threshold 2" in capsys.readouterr().out
    v1 = make_bundle(make_model, tmp_path, 1, seed=1)
    assert cli("publish", str(v1), "--repo", str(repo), "--keys", str(keys)) == 0
    assert "published mlp v1" in capsys.readouterr().out
    v2 = make_bundle(make_model, tmp_path, 2, seed=2)
    argv = ["publish", str(v2), "--repo", str(repo), "--keys", str(keys), "--rollout", "100%"]
    assert cli(*argv, "--channel", "stable", "--min-agent-version", "0.1") == 0
    assert "delta from v1" in capsys.readouterr().out
    assert cli("publish", "--refresh", "--repo", str(repo), "--keys", str(keys)) == 0
    assert cli("keys", "rotate", "snapshot", "--keys", str(keys), "--repo", str(repo)) == 0
    assert "keys:snapshot" in capsys.readouterr().out

    root = repo / "metadata" / "1.root.json"
    with serve(repo) as server:
        state = tmp_path / "device"
        done = agent_cli(server.url, state, root, "--device-id", "dev-42")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"] == "updated"
        assert committed(state)[1] == 2  # type: ignore[index]
        assert (state / "device_id").read_text().strip() == "dev-42"
        again = agent_cli(server.url, state, root)
        assert again.returncode == 0 and json.loads(again.stdout)["result"] == "up-to-date"
    gone = agent_cli(server.url, state, root)  # server stopped: a failed cycle, exit 0
    assert gone.returncode == 0 and json.loads(gone.stdout)["result"] == "failed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["publish", "--refresh", "x"], "do not name a bundle"),
        (["publish", "--rollout", "150%", "b"], "between 0% and 100%"),
        (["publish", "--rollout", "ten", "b"], "percentage"),
        (["keys", "rotate", "owner"], "unknown role"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    keys = tmp_path / "keys"
    assert cli("keys", "init", "--keys", str(keys)) == 0
    capsys.readouterr()
    extra = ["--keys", str(keys)]
    if argv[0] == "publish":
        extra += ["--repo", str(tmp_path / "repo")]
    assert cli(*argv, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_agent_that_cannot_work_exits_non_zero(tmp_path: Path) -> None:
    out = agent_cli("http://127.0.0.1:9", tmp_path / "state", tmp_path / "missing-root.json")
    assert out.returncode == 2 and "cannot read trusted root" in out.stderr
