"""How the device update agent is set up: where the repository and the state live, which
model and channel it follows, the fleet it reports to, and the limits on a cycle (disk,
time, rate, crashes).

A plain frozen dataclass, apart from :class:`~edgeinfer.deliver.agent.Agent` so that the
agent's parts can read it without importing the agent (as python-tuf keeps
``UpdaterConfig`` in ``ngclient/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.deliver.download import DownloadConfig
from edgeinfer.deliver.gate import GateConfig

__all__ = ["AgentConfig"]


@dataclass(frozen=True)
class AgentConfig:
    repo_url: str  # base URL of the repository (holds metadata/ and targets/)
    state_dir: Path
    root: Path | None = None  # trusted root.json, needed on the first run only
    model: str | None = None  # model name; None: the installed one, or the repository's only one
    channel: str = "stable"
    device_id: str | None = None  # None: a random id generated once and kept in state_dir
    version_floor: int = 0  # never install a version below this
    min_free_bytes: int = 32 << 20  # bytes that must stay free after the update
    use_deltas: bool = True
    report_url: str | None = None  # POST status.json here after each cycle
    report_timeout: float = 5.0  # seconds
    fleet_url: str | None = None  # enroll with this fleet service and report every cycle to it
    enroll_token: str | None = None  # the fleet's enrollment token; needed until enrolled
    rollout_key: Path | None = None  # the fleet's pinned rollout public key: follow its rollouts
    fleet_timeout: float = 5.0  # seconds per request to the fleet (it never holds a cycle up)
    max_trial_crashes: int = 2  # trials cut short by a crash before a version counts as bad
    cycle_timeout: float = 3600.0  # seconds; transfers stop here (downloads resume next cycle)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    gate: GateConfig = field(default_factory=GateConfig)
