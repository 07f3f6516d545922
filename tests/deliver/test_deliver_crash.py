"""``kill -9`` of the agent at every step of an install, then restart.

The agent runs as a real subprocess (``edgeinfer agent --once``) with the crash hook
``EDGEINFER_AGENT_CRASH_AT=<step>``, which ends it with ``os._exit(137)`` at that point.
After the crash the device holds exactly the old or exactly the new version; a restart
finishes the job (exactly the new version, no temporary files left), and a second
recovery run changes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from deliver_support import (
    agent_cli,
    committed,
    copy_state,
    fingerprint,
    fleet,
    shared_make_mlp,
    temp_files,
)

from edgeinfer.deliver._fsutil import CRASH_ENV

STEPS = ["download", "verify", "unpack", "switch", "gate", "commit"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("crash")
    with fleet(tmp, shared_make_mlp()) as fl:
        v1 = committed(fl.state)
        fl.pub.publish(fl.bundle(2))
        yield fl, v1


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_every_step(world: Any, step: str, tmp_path: Path) -> None:
    fl, v1 = world
    state = copy_state(fl.state, tmp_path / "device")
    root = fl.repo / "metadata" / "1.root.json"

    crashed = agent_cli(fl.server.url, state, root, env={CRASH_ENV: step})
    assert crashed.returncode == 137, crashed.stderr
    after_crash = committed(state)
    if step == "commit":  # died right after the atomic commit: exactly the new version
        assert after_crash is not None and after_crash[1] == 2
    else:  # anywhere before it: exactly the old version
        assert after_crash == v1

    restarted = agent_cli(fl.server.url, state, root)
    assert restarted.returncode == 0, restarted.stderr
    v2 = committed(state)
    assert v2 is not None and v2[1] == 2 and v2[0] == "mlp"
    assert temp_files(state) == []
    status = json.loads((state / "status.json").read_text())
    assert status["active"]["version"] == 2 and status["active"]["sha256"] == v2[2]
    if step == "commit":  # the crash came after the commit: nothing left to do
        assert status["last_cycle"]["result"] == "up-to-date"
    else:
        assert status["last_cycle"]["result"] == "updated", status

    settled = fingerprint(state)
    again = agent_cli(fl.server.url, state, root)
    assert again.returncode == 0, again.stderr
    assert fingerprint(state) == settled
    assert json.loads((state / "status.json").read_text())["last_cycle"]["result"] == "up-to-date"
    assert temp_files(state) == []
    shutil.rmtree(state)
