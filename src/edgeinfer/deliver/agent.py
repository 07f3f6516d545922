"""The device update agent: refresh signed metadata, fetch, install, check, commit or roll back.

One cycle (:meth:`Agent.run_once`)::

    recover        clean what a crash left; roll back a trial cut short
    refresh        python-tuf ngclient Updater, from the root provisioned at setup
    choose         newest allowed version (channel, rollout, floor, agent version, not bad)
    (rollout)      with a pinned rollout key: the fleet's signed rollout document may hold
                   the chosen version back (``held``), never name another one
    disk check     before any download
    download       a delta from the installed bundle if one exists, else the full bundle;
                   resumable, bounded by the signed length, verified by the signed hash
    (delta)        rebuild the bundle, verify it against the full target's length and hash;
                   any problem (bad or missing delta, wrong base) -> the full bundle
    install        unpack into the inactive A/B slot (the live slot is never written)
    switch         os.replace of the pointer file; the new slot is on trial
    gate           loads, golden sample, latency budget (edgeinfer.deliver.gate)
    commit         or roll back and remember the version as bad
    report         STATE_DIR/status.json (and a POST to the report URL, if set; a signed
                   report to the fleet, if set, through its on-disk outbox)

Every refusal leaves the device on exactly the version it had. Only one agent runs per
state directory (a lock file). ``CycleResult`` and ``status.json`` say what happened.

A cycle has a deadline (``cycle_timeout``) and every transfer a minimum average rate
(``DownloadConfig.min_rate``): a server that trickles or never answers ends the cycle as
``failed`` and releases the lock; downloads resume next cycle. A full disk, at any step, is
a ``failed`` cycle retried later -- never a strike against the version being installed.
Credentials in the repository URL never reach a log line or ``status.json``.

The settings are :class:`~edgeinfer.deliver.agent_config.AgentConfig`; the lock, crash
recovery, disk check, download cleanup and ``status.json`` of the state directory are
:mod:`edgeinfer.deliver._agent_files`.

>>> agent = Agent(AgentConfig("http://updates.local/repo", "/var/lib/edgeinfer",
...                           root=Path("root.json")))                 # doctest: +SKIP
>>> agent.run_once().result                                            # doctest: +SKIP
'updated'
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeinfer._version import __version__
from edgeinfer.deliver._agent_files import _AgentFiles
from edgeinfer.deliver._agent_fleet import _AgentFleet
from edgeinfer.deliver._fsutil import crash_point, read_json
from edgeinfer.deliver._transfer import check_http_url, disk_full, scrub, split_userinfo
from edgeinfer.deliver._tuf_client import PacedFetcher, open_updater, refresh_targets
from edgeinfer.deliver.agent_config import AgentConfig
from edgeinfer.deliver.delta import apply_delta
from edgeinfer.deliver.download import Downloader, target_url
from edgeinfer.deliver.errors import (
    AgentError,
    DeltaError,
    DiskSpaceError,
    UpdateDownloadError,
    UpdateRefused,
)
from edgeinfer.deliver.gate import GateResult, run_gate
from edgeinfer.deliver.select import Device, choose
from edgeinfer.deliver.slots import SlotStore
from edgeinfer.deliver.state import CycleResult, History, device_id, utc_now
from edgeinfer.errors import BundleError

__all__ = ["Agent", "AgentConfig"]

logger = logging.getLogger(__name__)


@dataclass
class _Cycle:
    via: str | None = None
    received: int = 0
    from_version: int | None = None
    to_version: int | None = None
    notes: list[str] = field(default_factory=list)
    step: str = "recovering"  # what the cycle was doing, for a failure's message
    gate: GateResult | None = None  # the health gate's result, when one ran


class Agent(_AgentFiles, _AgentFleet):
    """Keeps one model on this device up to date from a TUF repository."""

    def __init__(self, config: AgentConfig) -> None:
        for option, url in (("--repo-url", config.repo_url), ("--report-url", config.report_url)):
            if url is not None and (problem := check_http_url(url)) is not None:
                raise AgentError(f"{option} {problem}")
        if not config.cycle_timeout > 0:
            raise AgentError(f"cycle timeout {config.cycle_timeout!r}: expected seconds > 0")
        self.config = config
        # credentials travel as basic auth, never inside a URL that httpx or ngclient logs
        self._repo_base, self._auth = split_userinfo(config.repo_url.rstrip("/"))
        self.state_dir = Path(config.state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.device_id = device_id(self.state_dir, config.device_id)
        except OSError as exc:
            raise AgentError(f"state directory {self.state_dir} is not usable: {exc}") from None
        self.agent_version = __version__
        self.slots = SlotStore(self.state_dir)
        self.metadata_dir = self.state_dir / "metadata"
        self.downloads = self.state_dir / "downloads"
        self.status_path = self.state_dir / "status.json"
        self.fleet, self.rollout_gate = self._fleet_parts(config)

    # ------------------------------------------------------------ public
    def run_once(self) -> CycleResult:
        """One update cycle; refusals and failures are results, not exceptions.

        Raises :class:`AgentError` only when the agent cannot work at all.
        """
        start = time.monotonic()
        cycle = _Cycle()
        with self._locked():
            history = History(self.state_dir)
            committed = self.slots.committed()
            cycle.from_version = None if committed is None else committed.version
            try:
                self._recover(history)
                result, reason = self._cycle(cycle, history, start + self.config.cycle_timeout)
            except UpdateRefused as exc:
                result, reason = "refused", str(exc)
            except DiskSpaceError as exc:
                result, reason = "refused", str(exc)
            except (UpdateDownloadError, DeltaError) as exc:
                result, reason = "failed", str(exc)
            except OSError as exc:
                result, reason = "failed", self._os_failure(exc, cycle)
            if cycle.notes:
                reason = "; ".join([*cycle.notes, *([reason] if reason else [])])
            if reason is not None:  # no URL inside carries credentials; this makes sure
                reason = scrub(reason, self.config.repo_url, self.config.report_url)
            outcome = CycleResult(
                result,
                cycle.via,
                cycle.received,
                reason,
                cycle.from_version,
                cycle.to_version,
                round(time.monotonic() - start, 3),
                utc_now(),
            )
            status = self._write_status(outcome, history)
            if self.fleet is not None:  # under the lock: STATE_DIR/fleet has one writer
                self._report_to_fleet(self.fleet, status, cycle.gate)
        logger.info("update cycle: %s%s", result, f" ({reason})" if reason else "")
        self._report(status)
        return outcome

    def run_forever(self, interval: float = 60.0, stop: threading.Event | None = None) -> None:
        """Run a cycle every ``interval`` seconds until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.run_once()
            stop.wait(interval)

    def status(self) -> dict[str, Any] | None:
        """The last ``status.json``, or ``None`` before the first cycle."""
        data = read_json(self.status_path)
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------ the cycle
    def _cycle(self, cycle: _Cycle, history: History, deadline: float) -> tuple[str, str | None]:
        cycle.step = "refreshing metadata"
        fetcher = PacedFetcher(
            self.config.download,
            deadline=deadline,
            deadline_s=self.config.cycle_timeout,
            user_agent=f"edgeinfer-agent/{self.agent_version}",
            auth=self._auth,
        )
        try:
            updater = open_updater(self.metadata_dir, self._repo_base, self.config.root, fetcher)
            targets = refresh_targets(updater, self.metadata_dir, self._repo_base)
        finally:
            fetcher.close()
        committed = self.slots.committed()
        device = Device(
            self.device_id,
            self.config.channel,
            self.config.model,
            None if committed is None else committed.name,
            None if committed is None else committed.version,
            None if committed is None else committed.sha256,
            self.config.version_floor,
            self.agent_version,
            frozenset(history.bad),
            fleet_paced=self.rollout_gate is not None,
        )
        choice = choose(targets.items(), device)
        if choice.problem is not None:
            raise AgentError(choice.problem)
        for why in choice.skipped:
            logger.info("skipped %s", why)
        for why in choice.invalid:
            logger.warning("refused target: %s", why)
        if choice.full is None:
            self._clean_downloads(keep=set())
            if choice.invalid:
                return "refused", "invalid targets refused: " + "; ".join(choice.invalid)
            return "up-to-date", None
        full = choice.full
        cycle.to_version = full.version
        if self.rollout_gate is not None:
            paced = self._follow_rollout(self.rollout_gate, choice, targets, device)
            if isinstance(paced, str):  # held: never a strike against the version
                return "held", f"held by rollout: {paced}"
            choice = paced
            assert paced.full is not None
            full = paced.full
            cycle.to_version = full.version
        full_tf = updater.get_targetinfo(full.path)
        if full_tf is None:  # pragma: no cover - choose() only picks listed targets
            raise UpdateRefused(f"{full.path} vanished from the verified metadata")
        delta = choice.delta if self.config.use_deltas else None
        self._clean_downloads(keep={full.sha256, *([delta.sha256] if delta else [])})
        cycle.step = f"downloading version {full.version}"
        with Downloader(
            self.config.download,
            deadline=deadline,
            deadline_s=self.config.cycle_timeout,
            auth=self._auth,
        ) as downloader:
            try:
                packed = None
                if delta is not None and committed is not None:
                    try:
                        packed = self._via_delta(updater, downloader, delta, full_tf, committed)
                        cycle.via = "delta"
                    except (DeltaError, UpdateRefused, UpdateDownloadError) as exc:
                        cycle.notes.append(f"delta not used ({exc}); fell back to the full bundle")
                        logger.warning("delta %s not used: %s", delta.path, exc)
                if packed is None:
                    self._check_disk(full.length + full.unpacked_bytes)
                    cycle.via = "full"
                    url = target_url(self._targets_url, full.path, full.sha256)
                    packed, _ = downloader.fetch(url, full_tf, self.downloads)
            finally:
                cycle.received = downloader.received
        cycle.step = f"installing version {full.version}"
        try:
            info = self.slots.install(packed, full.model, full.version, full.sha256)
        except (BundleError, UpdateRefused) as exc:
            if (full_disk := disk_full(exc)) is not None:  # the device's fault, not the bundle's
                raise full_disk from None
            # signed, hash-correct, and still not a usable bundle: never fetch it again
            history.mark_bad(full.sha256, full.model, full.version, f"install: {exc}")
            raise UpdateRefused(f"version {full.version} cannot be installed: {exc}") from None
        finally:
            self._clean_downloads(keep=set())
        previous = None if committed is None else self.slots.bundle_dir(committed)
        cycle.step = f"switching to version {full.version}"
        self.slots.switch(info, history.strikes.get(full.sha256, 0) + 1)
        cycle.step = f"health-checking version {full.version}"
        try:
            gate = run_gate(self.slots.bundle_dir(info), previous, self.config.gate)
        except Exception as exc:  # whatever breaks inside the gate fails the gate
            if (full_disk := disk_full(exc)) is not None:
                self._end_trial_quietly()
                raise full_disk from None
            gate = GateResult(False, f"health gate crashed: {type(exc).__name__}: {exc}")
        cycle.gate = gate
        if gate.ok:
            cycle.step = f"committing version {full.version}"
            try:
                self.slots.commit()
            except OSError:
                self._end_trial_quietly()
                raise
            crash_point("commit")
            try:
                history.clear_strikes(full.sha256)
            except OSError as exc:  # the update is done; stale strikes only count crashes
                logger.warning("could not clear the crash count of v%d: %s", full.version, exc)
            return "updated", None
        cycle.step = f"rolling back version {full.version}"
        self.slots.rollback()
        history.mark_bad(full.sha256, full.model, full.version, gate.reason or "health gate")
        return "rolled-back", f"version {full.version} failed its health gate: {gate.reason}"

    def _via_delta(
        self,
        updater: Any,
        downloader: Downloader,
        delta: Any,
        full_tf: Any,
        committed: Any,
    ) -> Path:
        base = self.slots.packed(committed)
        if not base.is_file():
            raise DeltaError(f"the installed bundle's archive {base} is missing")
        delta_tf = updater.get_targetinfo(delta.path)
        if delta_tf is None:  # pragma: no cover
            raise DeltaError(f"{delta.path} vanished from the verified metadata")
        self._check_disk(delta.length + 2 * full_tf.length)
        url = target_url(self._targets_url, delta.path, delta.sha256)
        part, _ = downloader.fetch(url, delta_tf, self.downloads)
        out = self.downloads / f"{full_tf.hashes['sha256']}.part"
        try:
            apply_delta(base, part, out)
        finally:
            part.unlink(missing_ok=True)
        with open(out, "rb") as f:
            try:
                full_tf.verify_length_and_hashes(f)
            except Exception as exc:  # LengthOrHashMismatchError
                out.unlink(missing_ok=True)
                raise DeltaError(
                    f"rebuilt bundle does not match its signed target: {exc}"
                ) from None
        return out

    @property
    def _targets_url(self) -> str:
        return self._repo_base + "/targets"

    def _os_failure(self, exc: OSError, cycle: _Cycle) -> str:
        """A failed cycle's reason for an ``OSError``: a full disk said plainly."""
        if disk_full(exc) is not None:
            stays = "nothing installed yet"
            if cycle.from_version is not None:
                stays = f"the device stays on version {cycle.from_version}"
            return (
                f"the disk holding {self.state_dir} is full ({exc.strerror}) while "
                f"{cycle.step}; {stays} and tries again next cycle"
            )
        return f"{cycle.step}: {exc}"
