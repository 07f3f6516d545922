"""The update agent's own files in its state directory, kept in order between cycles.

:class:`~edgeinfer.deliver.agent.Agent` holds ``STATE_DIR/.lock`` for a whole cycle (one
agent per state directory); before a cycle it finishes what a crash interrupted (a trial
cut short is rolled back and counted against its version, ngclient's and the downloader's
temporary files go); during one it checks the disk before a download and keeps only the
downloads the cycle still needs; after one it writes ``status.json`` and POSTs it to the
report URL, if set (:mod:`edgeinfer.deliver.state` has their formats).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from edgeinfer.deliver._fsutil import exclusive_lock
from edgeinfer.deliver.agent_config import AgentConfig
from edgeinfer.deliver.errors import AgentError, DiskSpaceError
from edgeinfer.deliver.slots import SlotStore
from edgeinfer.deliver.state import CycleResult, History, report_status, utc_now, write_status

__all__: list[str] = []

logger = logging.getLogger("edgeinfer.deliver.agent")  # one logger for the whole agent


class _AgentFiles:
    """The Agent's state-directory half (a mixin): what it needs of the Agent is below."""

    config: AgentConfig
    state_dir: Path
    slots: SlotStore
    metadata_dir: Path
    downloads: Path
    status_path: Path
    device_id: str
    agent_version: str

    def _recover(self, history: History) -> None:
        interrupted = self.slots.recover()
        if interrupted is not None:
            n = history.strike(interrupted.sha256)
            logger.warning(
                "rolled back %s v%d: its trial was cut short by a crash (%d of %d allowed)",
                interrupted.name,
                interrupted.version,
                n,
                self.config.max_trial_crashes,
            )
            if n >= self.config.max_trial_crashes:
                history.mark_bad(
                    interrupted.sha256,
                    interrupted.name,
                    interrupted.version,
                    f"the agent died {n} times during its health gate",
                )
        if self.metadata_dir.is_dir():  # ngclient's own temporary files
            for tmp in self.metadata_dir.glob("tmp*"):
                tmp.unlink(missing_ok=True)
        if self.downloads.is_dir():
            for tmp in self.downloads.glob(".*"):
                tmp.unlink(missing_ok=True)

    def _end_trial_quietly(self) -> None:
        """A trial that ended in a failed write (a full disk): back to the committed bundle.

        Never a strike against the version. When even the rollback cannot be written, the
        pointer stays on trial without its crash marker, and the next cycle's recovery
        finishes the rollback.
        """
        try:
            self.slots.rollback()
        except OSError as exc:
            logger.warning("could not write the rollback yet (%s); the next cycle will", exc)

    def _clean_downloads(self, keep: set[str]) -> None:
        if not self.downloads.is_dir():
            return
        for f in self.downloads.iterdir():
            if f.name.split(".", 1)[0] not in keep:
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)

    def _check_disk(self, need: int) -> None:
        self.downloads.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.downloads).free
        if free - need < self.config.min_free_bytes:
            raise DiskSpaceError(
                f"not enough disk space for the update: it needs {need / 1e6:.1f} MB and "
                f"{self.config.min_free_bytes / 1e6:.1f} MB must stay free, but "
                f"{free / 1e6:.1f} MB are free in {self.state_dir}"
            )

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        path = self.state_dir / ".lock"
        return exclusive_lock(
            path,
            0.0,
            lambda: AgentError(
                f"another agent is running on {self.state_dir} (lock {path} is held)"
            ),
        )

    def _write_status(self, outcome: CycleResult, history: History) -> dict[str, Any]:
        committed = self.slots.committed()
        active = None
        if committed is not None:
            active = {
                **committed.to_dict(),
                "bundle_path": str(self.slots.bundle_dir(committed).resolve()),
            }
        status = {
            "device_id": self.device_id,
            "agent_version": self.agent_version,
            "channel": self.config.channel,
            "updated_at": utc_now(),
            "active": active,
            "last_cycle": outcome.to_dict(),
            "bad_versions": history.bad_list(),
        }
        write_status(self.status_path, status)
        return status

    def _report(self, status: dict[str, Any]) -> None:
        if self.config.report_url:
            report_status(self.config.report_url, status, self.config.report_timeout)
