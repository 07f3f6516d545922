"""Ship models securely: a TUF repository with delta updates, and a device agent.

The build side signs and publishes (:class:`KeyStore`, :class:`Publisher`); deltas between
bundle versions come from :mod:`edgeinfer.deliver.delta`; the device side runs
:class:`Agent`, which installs into A/B slots, health-checks and commits or rolls back;
servers follow the committed bundle with :class:`ActiveBundleWatcher`.

Needs the ``deliver`` extra (python-tuf, bsdiff4, zstandard, httpx)::

    pip install 'edgeinfer[deliver]'
"""

from __future__ import annotations

from edgeinfer.errors import MissingDependencyError

try:
    import tuf  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("tuf", "deliver", "Model delivery (edgeinfer.deliver)") from exc

from edgeinfer.deliver.agent import Agent, AgentConfig
from edgeinfer.deliver.delta import DeltaConfig, DeltaInfo, apply_delta, make_delta
from edgeinfer.deliver.download import DownloadConfig
from edgeinfer.deliver.errors import (
    AgentError,
    DeliverError,
    DeltaError,
    DiskSpaceError,
    KeyStoreError,
    PublishError,
    UpdateDownloadError,
    UpdateRefused,
)
from edgeinfer.deliver.gate import GateConfig, GateResult, run_gate
from edgeinfer.deliver.keys import KeyStore
from edgeinfer.deliver.publish import PublishConfig, Publisher, PublishResult
from edgeinfer.deliver.slots import SlotInfo, SlotStore
from edgeinfer.deliver.state import CycleResult
from edgeinfer.deliver.watch import ActiveBundleWatcher, committed_bundle

__all__ = [
    "ActiveBundleWatcher",
    "Agent",
    "AgentConfig",
    "AgentError",
    "CycleResult",
    "DeliverError",
    "DeltaConfig",
    "DeltaError",
    "DeltaInfo",
    "DiskSpaceError",
    "DownloadConfig",
    "GateConfig",
    "GateResult",
    "KeyStore",
    "KeyStoreError",
    "PublishConfig",
    "PublishError",
    "PublishResult",
    "Publisher",
    "SlotInfo",
    "SlotStore",
    "UpdateDownloadError",
    "UpdateRefused",
    "apply_delta",
    "committed_bundle",
    "make_delta",
    "run_gate",
]
