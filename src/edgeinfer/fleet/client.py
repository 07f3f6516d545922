"""The device side of the fleet: its key, enrollment, signed reports and the outbox.

Everything lives under ``STATE_DIR/fleet/`` (the agent's state directory, whose lock the
agent holds, so one writer at a time)::

    device_key.pem      Ed25519 private key (PKCS#8), made on first use, mode 0600
    enrollment.json     {"fleet_url": ..., "device_id": "d-..."} once enrolled
    counter             the last counter used; written before a report is queued
    outbox/NNNN.json    signed reports not yet accepted, sent oldest first

A report is signed when it is made and queued on disk before anything is sent, so a device
offline (or a fleet down) keeps its reports, up to ``max_outbox`` of them (then the oldest
go), and sends them in order when the fleet answers again. Resending one whose answer was
lost is harmless: the fleet takes a report once per counter. A report the fleet *refuses*
(4xx) is dropped with a log line; retrying it would only be refused again.

The agent calls :func:`report_cycle` after each cycle with its ``status.json``::

    >>> client = FleetClient(ClientConfig("http://fleet:8700", state_dir, enroll_token=t))
    >>> report_cycle(client, agent.status(), latency_ms=[4.1, 3.9, 4.4])  # doctest: +SKIP
    FlushResult(sent=1, refused=0, kept=0)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeinfer._atomic import write_atomic
from edgeinfer.errors import InputError
from edgeinfer.fleet import reports as wire
from edgeinfer.fleet import rollout_docs
from edgeinfer.fleet.errors import Conflict, FleetUnavailable, Refused, refusal

__all__ = [
    "ClientConfig",
    "FleetClient",
    "FlushResult",
    "GateVerdict",
    "RolloutGate",
    "hardware_info",
    "report_cycle",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientConfig:
    fleet_url: str  # http(s)://host:port of `edgeinfer fleet serve`
    state_dir: Path  # the agent's --state-dir; the fleet's files go in STATE_DIR/fleet
    enroll_token: str | None = None  # needed until the device is enrolled
    timeout: float = 10.0  # seconds per HTTP request
    max_outbox: int = 1000  # reports kept while the fleet is unreachable (oldest dropped)
    hardware_class: str | None = None  # groups latency sketches; default system-machine-Ncpu


@dataclass(frozen=True)
class FlushResult:
    sent: int  # accepted by the fleet (re-deliveries included)
    refused: int  # refused by the fleet (4xx) and dropped
    kept: int  # still in the outbox: the fleet could not be reached


def hardware_info(hardware_class: str | None = None) -> dict[str, Any]:
    """What this device runs on, in the report's ``hardware`` shape."""
    import onnxruntime

    system, machine, cpus = platform.system().lower(), platform.machine().lower(), os.cpu_count()
    return {
        "hardware_class": hardware_class or f"{system}-{machine}-{cpus or 0}cpu",
        "machine": machine[:64],
        "system": system[:64],
        "cpus": cpus,
        "providers": list(onnxruntime.get_available_providers())[:16],
    }


class FleetClient:
    """One device's identity and outbox; ``report()`` queues, signs and sends."""

    def __init__(self, config: ClientConfig) -> None:
        url = config.fleet_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--fleet {config.fleet_url!r}: expected http:// or https://")
        self.config = config
        self.url = url
        self.dir = Path(config.state_dir) / "fleet"
        self.outbox = self.dir / "outbox"
        self._key: Ed25519PrivateKey | None = None

    # identity ---------------------------------------------------------------------------
    @property
    def key(self) -> Ed25519PrivateKey:
        """The device key, made (and written atomically, mode 0600) on first use."""
        if self._key is None:
            path = self.dir / "device_key.pem"
            if path.is_file():
                loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(loaded, Ed25519PrivateKey):
                    raise InputError(f"{path}: not an Ed25519 private key")
                self._key = loaded
            else:
                key = Ed25519PrivateKey.generate()
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_atomic(path, pem, mode=0o600)
                self._key = key
        return self._key

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def device_id(self) -> str:
        return wire.device_id_for(self.public_key)

    def enrolled(self) -> bool:
        data = self._read_json(self.dir / "enrollment.json")
        return (
            isinstance(data, dict)
            and data.get("fleet_url") == self.url
            and data.get("device_id") == self.device_id
        )

    def enroll(self) -> str:
        """Enroll with the fleet (once per fleet URL); the device id."""
        if self.enrolled():
            return self.device_id
        if not self.config.enroll_token:
            raise InputError(
                f"this device is not enrolled with {self.url}: pass an enrollment token "
                "(--enroll-token; the operator makes one with `edgeinfer fleet token create`)"
            )
        document = {
            "public_key": wire.b64encode(self.public_key),
            "token": self.config.enroll_token,
            "created_at_ms": int(time.time() * 1000),
            "hardware": hardware_info(self.config.hardware_class),
        }
        wire.validate(wire.Enrollment, document, "enrollment")
        answer = self._post("/v1/enroll", wire.seal(self.key, "enrollment", document))
        if answer.get("device_id") != self.device_id:
            raise FleetUnavailable(f"{self.url}: the enrollment answer names another device")
        # a device that lost its counter file resumes above what the fleet last accepted
        last = answer.get("last_counter", 0)
        if isinstance(last, int) and last > self._counter():
            self._write_counter(last)
        body = json.dumps({"fleet_url": self.url, "device_id": self.device_id}) + "\n"
        write_atomic(self.dir / "enrollment.json", body.encode("utf-8"))
        return self.device_id

    # reports ----------------------------------------------------------------------------
    def queue(self, payload: Mapping[str, Any], bundle_sha256: str | None) -> int:
        """Sign ``payload`` with the next counter and keep it in the outbox; the counter."""
        counter = self._counter() + 1
        document = {
            "device_id": self.device_id,
            "counter": counter,
            "bundle_sha256": bundle_sha256,
            "created_at_ms": int(time.time() * 1000),
            "payload": dict(payload),
        }
        wire.validate(wire.Report, document, "report")  # a bad payload is our bug: fail here
        self._write_counter(counter)  # before the report exists: a counter is never reused
        write_atomic(self.outbox / f"{counter:016d}.json", wire.seal(self.key, "report", document))
        self._trim()
        return counter

    def flush(self) -> FlushResult:
        """Send the outbox, oldest first, until it is empty or the fleet is unreachable.

        A report refused because the fleet already passed its counter (this device's
        counter file was lost, or restored from a backup) is signed again above the
        fleet's last counter and sent once more; other refusals drop the report.
        """
        sent = refused = 0
        budget = 2 * len(self.pending()) + 1  # each report is at most re-signed once
        try:
            while (pending := self.pending()) and budget > 0:
                budget -= 1
                if not self.enrolled():
                    self.enroll()
                path = pending[0]
                try:
                    self._post("/v1/reports", path.read_bytes())
                    sent += 1
                except Conflict as exc:
                    if not self._resign(path, exc.last_counter):
                        log.warning("the fleet refused report %s: %s", path.stem, exc)
                        refused += 1
                except Refused as exc:
                    log.warning("the fleet refused report %s: %s", path.stem.lstrip("0"), exc)
                    refused += 1
                path.unlink(missing_ok=True)
        except FleetUnavailable as exc:
            log.warning("fleet unreachable, %d report(s) kept: %s", len(self.pending()), exc)
        return FlushResult(sent, refused, len(self.pending()))

    def _resign(self, path: Path, last_counter: int | None) -> bool:
        """Queue ``path``'s payload again above ``last_counter``; False if that cannot help."""
        if last_counter is None or last_counter < int(path.stem):
            return False
        try:
            report = json.loads(json.loads(path.read_bytes())["report"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if last_counter > self._counter():
            self._write_counter(last_counter)
        self.queue(report["payload"], report["bundle_sha256"])
        log.warning(
            "the fleet had passed counter %d (last %d): report signed again as %d",
            int(path.stem),
            last_counter,
            self._counter(),
        )
        return True

    def report(self, payload: Mapping[str, Any], bundle_sha256: str | None) -> FlushResult:
        self.queue(payload, bundle_sha256)
        return self.flush()

    def pending(self) -> list[Path]:
        if not self.outbox.is_dir():
            return []
        return sorted(p for p in self.outbox.glob("*.json") if p.stem.isdigit())

    def rollout_document(self, model: str) -> bytes | None:
        """The fleet's signed rollout document of ``model`` as fetched (verify it with
        :class:`RolloutGate`); ``None`` when the fleet has none or cannot be reached."""
        from urllib.parse import quote

        import httpx

        try:
            answer = httpx.get(
                f"{self.url}/v1/rollouts/{quote(model, safe='')}/document",
                timeout=self.config.timeout,
                verify=_tls(),
            )
        except httpx.HTTPError as exc:
            log.warning("fleet unreachable for the rollout of %s: %s", model, exc)
            return None
        return answer.content if answer.status_code == 200 else None

    # internals --------------------------------------------------------------------------
    def _trim(self) -> None:
        pending = self.pending()
        for path in pending[: max(0, len(pending) - self.config.max_outbox)]:
            log.warning("fleet outbox full: dropping the oldest report %s", path.name)
            path.unlink(missing_ok=True)

    def _counter(self) -> int:
        try:
            return int((self.dir / "counter").read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            newest = self.pending()
            return int(newest[-1].stem) if newest else 0

    def _write_counter(self, value: int) -> None:
        write_atomic(self.dir / "counter", f"{value}\n".encode("ascii"))

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _post(self, route: str, body: bytes) -> dict[str, Any]:
        import httpx

        try:
            answer = httpx.post(
                self.url + route,
                content=body,
                headers={"content-type": "application/json"},
                timeout=self.config.timeout,
                verify=_tls(),
            )
        except httpx.HTTPError as exc:
            raise FleetUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        try:
            data = answer.json()
        except ValueError:
            data = None
        if answer.status_code >= 500 or not isinstance(data, dict):
            raise FleetUnavailable(f"{self.url}{route}: HTTP {answer.status_code}")
        if answer.status_code >= 400:
            last = data.get("last_counter")
            raise refusal(
                answer.status_code,
                str(data.get("error", answer.status_code)),
                last if isinstance(last, int) and not isinstance(last, bool) else None,
            )
        return data


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS settings of every request to the fleet, made once: a new context reads the
    whole CA bundle (88 ms here, per request, before this was kept)."""
    import httpx

    return httpx.create_ssl_context()


def _payload(
    status: Mapping[str, Any],
    hardware: dict[str, Any],
    gate: Mapping[str, Any] | None,
    sketches: list[dict[str, str]],
) -> dict[str, Any]:
    active = status.get("active")
    cycle = status.get("last_cycle")
    payload: dict[str, Any] = {
        "agent_version": str(status.get("agent_version", ""))[:64],
        "agent_device_id": status.get("device_id"),
        "channel": status.get("channel"),
        "hardware": hardware,
        "gate": dict(gate or {}),
        "sketches": sketches,
    }
    if isinstance(active, Mapping):
        payload["active"] = {k: active[k] for k in ("slot", "name", "version", "sha256")}
    if isinstance(cycle, Mapping):
        keys = wire.Cycle.model_fields
        payload["cycle"] = {k: v for k, v in cycle.items() if k in keys}
        if isinstance(cycle.get("reason"), str):
            payload["cycle"]["reason"] = cycle["reason"][:2000]
    return payload


def report_cycle(
    client: FleetClient,
    status: Mapping[str, Any],
    *,
    latency_ms: Iterable[float] | None = None,
    drift: Mapping[str, Iterable[float]] | None = None,
    gate: Mapping[str, Any] | None = None,
) -> FlushResult:
    """Report one agent cycle (its ``status.json``) and send whatever the outbox holds.

    ``latency_ms``: on-device latencies of the active model; ``drift``: values per input or
    output (``"input:pixels"``, ``"output:probs"``), summarized as KLL sketches here, so no
    raw value leaves the device. Never raises for an unreachable fleet (the report waits).
    """
    from edgeinfer.fleet import sketches as kll

    summaries = []
    if latency_ms is not None:
        summaries.append({"metric": "latency_ms", "kll": kll.encode(kll.make(latency_ms))})
    for metric, values in (drift or {}).items():
        summaries.append({"metric": metric, "kll": kll.encode(kll.make(values))})
    hardware = hardware_info(client.config.hardware_class)
    payload = _payload(status, hardware, gate, summaries)
    active = payload.get("active")
    client.queue(payload, active["sha256"] if active else None)
    return client.flush()


# rollouts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateVerdict:
    allowed: bool
    reason: str  # why, in one line (the agent logs it)


class RolloutGate:
    """Answers "may this device install target X now?" from the fleet's signed document.

    Pure: the pinned rollout key and the device's id in, verdicts out (fetching the
    document is :meth:`FleetClient.rollout_document`'s). The document can only narrow what
    TUF verified: it never names anything to install, and a target it does not name
    goes by the plan TUF published. Rules for a bundle target TUF verified:

    * no valid document for the model (none, forged, expired, stale): TUF's plan, i.e.
      the target's own rollout share; a release held at 0 % stays held;
    * a document for another version of the model: TUF's plan for this one;
    * a document for this version whose target hash or length differ: refused;
    * halted or aborted: refused; otherwise allowed when the device's bucket is below
      the document's share, and, for a release not held (TUF share above 0), also below
      TUF's share: the release keys' share is a ceiling the fleet cannot raise.

    The agent keeps the newest ``doc_version`` it followed and passes it as
    ``min_doc_version``, so an old document replayed cannot reopen a halted rollout.
    """

    def __init__(self, public_key: Ed25519PublicKey, device_id: str) -> None:
        self.public_key = public_key
        self.device_id = device_id  # the agent's --device-id: TUF rollouts use the same bucket

    @classmethod
    def from_file(cls, path: Path, device_id: str) -> RolloutGate:
        """A gate with the key pinned in ``path`` (base64 of the raw key, or PEM)."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise InputError(f"rollout key {path}: cannot read it ({exc.strerror})") from None
        return cls(rollout_docs.load_public_key(text), device_id)

    def verify(
        self, body: bytes, model: str, *, now_ms: int | None = None, min_doc_version: int = 0
    ) -> rollout_docs.RolloutDocument:
        """The verified document in ``body``; :class:`BadRolloutDocument` otherwise."""
        return rollout_docs.open_document(
            body, self.public_key, model, now_ms=now_ms, min_doc_version=min_doc_version
        )

    def allows(
        self,
        document: rollout_docs.RolloutDocument | None,
        *,
        model: str,
        version: int,
        sha256: str,
        length: int,
        tuf_rollout: float,
    ) -> GateVerdict:
        """May this device install ``model`` ``version`` (TUF-verified ``sha256``/``length``,
        TUF rollout ``tuf_rollout`` percent) now?"""
        from edgeinfer._rollout import rollout_bucket

        bucket = rollout_bucket(self.device_id, model)
        if document is None or document.model != model or document.version != version:
            if bucket < tuf_rollout:
                return GateVerdict(True, f"TUF rollout {tuf_rollout:g}% reaches this device")
            held = "held (rollout 0%)" if tuf_rollout <= 0 else f"at {tuf_rollout:g}%"
            return GateVerdict(False, f"{model} {version} is {held} and no rollout names it")
        target = document.target
        if target is not None and (target.sha256 != sha256 or target.length != length):
            return GateVerdict(
                False, f"the rollout of {model} {version} names another bundle than TUF's"
            )
        if document.state in ("halted", "aborted"):
            return GateVerdict(False, f"the rollout of {model} {version} is {document.state}")
        share = document.share_bp / 100
        if tuf_rollout > 0:
            share = min(share, tuf_rollout)
        if bucket < share:
            return GateVerdict(True, f"rollout stage {document.stage + 1} at {share:g}%")
        return GateVerdict(
            False, f"rollout stage {document.stage + 1} at {share:g}% does not reach this device"
        )
