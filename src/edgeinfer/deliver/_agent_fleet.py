"""The update agent and the fleet: signed reports after every cycle, and rollouts followed.

With ``AgentConfig.fleet_url`` set, :class:`~edgeinfer.deliver.agent.Agent` queues a signed
report of each cycle in the on-disk outbox and sends it (enrolling first, once); a fleet that
is down or refuses costs one request and one log line, and the report waits. With a pinned
``rollout_key`` too, the fleet's signed rollout document of the chosen model may hold the
chosen version back -- never name another one; a replayed older document can never reopen
what a newer one halted (``STATE_DIR/rollout_followed.json``). Fleet and deliver meet only
here, in the report format and the agent's client (:mod:`edgeinfer.fleet.client`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from edgeinfer.deliver._fsutil import read_json, write_json
from edgeinfer.deliver.agent_config import AgentConfig
from edgeinfer.deliver.errors import AgentError
from edgeinfer.deliver.gate import GateResult
from edgeinfer.deliver.select import Choice, Device, choose
from edgeinfer.deliver.targets import BundleTarget
from edgeinfer.errors import EdgeInferError
from edgeinfer.fleet.client import (
    ClientConfig,
    FleetClient,
    GateVerdict,
    RolloutGate,
    report_cycle,
)

__all__: list[str] = []

logger = logging.getLogger("edgeinfer.deliver.agent")  # one logger for the whole agent


class _AgentFleet:
    """The Agent's fleet half (a mixin): what it needs of the Agent is below."""

    state_dir: Path
    device_id: str
    fleet: FleetClient | None
    rollout_gate: RolloutGate | None

    def _fleet_parts(self, config: AgentConfig) -> tuple[FleetClient | None, RolloutGate | None]:
        """The fleet client and rollout gate the settings ask for; one-line errors if wrong."""
        if config.fleet_url is None:
            if config.rollout_key is not None:
                raise AgentError("--rollout-key needs --fleet: the rollout documents come from it")
            return None, None
        if not config.fleet_timeout > 0:
            raise AgentError(f"fleet timeout {config.fleet_timeout!r}: expected seconds > 0")
        try:
            client = FleetClient(
                ClientConfig(
                    config.fleet_url,
                    self.state_dir,
                    enroll_token=config.enroll_token,
                    timeout=config.fleet_timeout,
                )
            )
            # enrolled() makes the device key on first start; enrolling comes with the
            # first report, so a fleet that is down never delays the first update
            if not client.enrolled() and not config.enroll_token:
                raise AgentError(
                    f"this device is not enrolled with {client.url}: pass an enrollment token "
                    "(--enroll-token, --enroll-token-file or EDGEINFER_ENROLL_TOKEN)"
                )
            gate = None
            if config.rollout_key is not None:
                # the TUF rollout bucket and the fleet's use the same id: the agent's
                gate = RolloutGate.from_file(config.rollout_key, device_id=self.device_id)
        except AgentError:
            raise
        except EdgeInferError as exc:
            raise AgentError(str(exc)) from None
        return client, gate

    def _report_to_fleet(
        self, client: FleetClient, status: dict[str, Any], gate: GateResult | None
    ) -> None:
        """Queue this cycle's signed report and send the outbox (enrolling first, once);
        never raises: a fleet that is down or refuses costs one request's timeout and one
        log line (the client's own for an unreachable fleet), and the report waits."""
        latency = list(gate.samples_ms) if gate is not None and gate.samples_ms else None
        try:
            sent = report_cycle(
                client,
                status,
                latency_ms=latency,
                gate=None if gate is None else gate.figures(),
            )
        except (EdgeInferError, OSError) as exc:
            logger.warning("fleet report kept in the outbox, not sent: %s", exc)
            return
        if sent.kept:
            logger.info("fleet report: %d sent, %d waiting in the outbox", sent.sent, sent.kept)

    def _follow_rollout(
        self, gate: RolloutGate, choice: Choice, targets: dict[str, Any], device: Device
    ) -> Choice | str:
        """The choice the fleet's rollout lets through, or why the device is held.

        ``choice`` was made without TUF's rollout shares (the gate applies them, so a release
        held at 0 % can be paced by the fleet); when its version is held, the newest version
        TUF's own plan reaches is taken instead, if the document allows that one.
        """
        full = choice.full
        assert full is not None
        document = self._rollout_document(gate, full.model)
        verdict = self._verdict(gate, document, full)
        if verdict.allowed:
            logger.info("rollout: %s", verdict.reason)
            return choice
        fallback = choose(targets.items(), dataclasses.replace(device, fleet_paced=False))
        other = fallback.full
        if (
            other is not None
            and other.version != full.version
            and self._verdict(gate, document, other).allowed
        ):
            logger.info(
                "rollout holds version %d (%s); version %d goes by TUF's plan",
                full.version,
                verdict.reason,
                other.version,
            )
            return fallback
        logger.info("rollout holds version %d: %s", full.version, verdict.reason)
        return verdict.reason

    @staticmethod
    def _verdict(gate: RolloutGate, document: Any, target: BundleTarget) -> GateVerdict:
        return gate.allows(
            document,
            model=target.model,
            version=target.version,
            sha256=target.sha256,
            length=target.length,
            tuf_rollout=target.rollout,
        )

    def _rollout_document(self, gate: RolloutGate, model: str) -> Any:
        """The fleet's verified rollout document of ``model``, or ``None`` (none, fleet
        unreachable, or not one to follow: forged, expired, older than one followed)."""
        assert self.fleet is not None
        body = self.fleet.rollout_document(model)
        if body is None:
            return None
        followed = self._followed_docs()
        try:
            document = gate.verify(body, model, min_doc_version=followed.get(model, 0))
        except EdgeInferError as exc:  # BadRolloutDocument: TUF's plan, as if none
            logger.warning("rollout document of %s not followed: %s", model, exc)
            return None
        if document.doc_version > followed.get(model, 0):
            # a replayed older document can never reopen what a newer one halted
            write_json(self._followed_path, {**followed, model: document.doc_version})
        return document

    @property
    def _followed_path(self) -> Path:
        return self.state_dir / "rollout_followed.json"

    def _followed_docs(self) -> dict[str, int]:
        """The newest rollout ``doc_version`` followed, per model."""
        data = read_json(self._followed_path)
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}
