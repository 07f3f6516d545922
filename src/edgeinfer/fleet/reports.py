"""Signed device reports and enrollment requests: the wire format both sides share.

A device sends an *envelope*: ``{"report": TEXT, "signature": B64}``. ``TEXT`` is the
canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of::

    {"device_id": "d-...", "counter": 12, "bundle_sha256": "<hex>" | null,
     "created_at_ms": 1733332211500, "payload": {...}}

and ``signature`` is the device's Ed25519 signature over ``REPORT_CONTEXT + TEXT``. The
signed text travels as a string, so the service verifies the very bytes the device signed
(no re-encoding on the way, as DSSE envelopes do it), then checks that the text *is*
canonical, so one report has one spelling. Enrollment works the same way with
``{"enrollment": TEXT, "signature": B64}``: the device proves it holds the key it enrolls.

pydantic checks the shapes at this boundary only (the store and the API use the validated
objects). Nothing here touches the network or the database: bytes in, verified objects out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeinfer.fleet.errors import BadReport, Unauthenticated

__all__ = [
    "ENROLL_CONTEXT",
    "REPORT_CONTEXT",
    "Cycle",
    "Enrollment",
    "Hardware",
    "Payload",
    "Report",
    "Sketch",
    "Slot",
    "b64decode",
    "b64encode",
    "canonical_json",
    "device_id_for",
    "open_envelope",
    "parse_json",
    "public_key_from_b64",
    "seal",
    "validate",
    "verify",
]

# Domain separation: a signature over a report can never pass as one over an enrollment.
REPORT_CONTEXT = b"edgeinfer-fleet-report-v1\n"
ENROLL_CONTEXT = b"edgeinfer-fleet-enroll-v1\n"

_HEX64 = r"^[0-9a-f]{64}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$"
RESULTS = ("updated", "up-to-date", "refused", "rolled-back", "failed", "held")
MAX_SKETCH_B64 = 65536  # characters of one base64 sketch (a KLL sketch of k=200 is ~3 kB)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_W = TypeVar("_W", bound=_Wire)


class Slot(_Wire):
    """One installed bundle: a slot of the device's A/B pair."""

    slot: str = Field(pattern=r"^[a-z]$")
    name: str = Field(pattern=_NAME)
    version: int = Field(ge=0)
    sha256: str = Field(pattern=_HEX64)


class Cycle(_Wire):
    """The last update cycle, as the agent's ``CycleResult`` says it."""

    result: Literal["updated", "up-to-date", "refused", "rolled-back", "failed", "held"]
    reason: str | None = Field(default=None, max_length=2000)
    via: Literal["delta", "full"] | None = None
    bytes_downloaded: int = Field(default=0, ge=0)
    from_version: int | None = Field(default=None, ge=0)
    to_version: int | None = Field(default=None, ge=0)
    seconds: float = Field(default=0.0, ge=0.0)
    finished_at: str = Field(default="", max_length=40)


class Hardware(_Wire):
    """What the device runs on; ``hardware_class`` groups latency sketches."""

    hardware_class: str = Field(pattern=_NAME)
    machine: str = Field(default="", max_length=64)
    system: str = Field(default="", max_length=64)
    cpus: int | None = Field(default=None, ge=1, le=4096)
    providers: list[str] = Field(default_factory=list, max_length=16)


class Sketch(_Wire):
    """A serialized KLL sketch (base64): on-device latency or one drift summary.

    ``metric`` is ``latency_ms``, ``input:NAME`` or ``output:NAME``; never raw values.
    """

    metric: str = Field(pattern=r"^(latency_ms|(input|output):[A-Za-z0-9._-]{1,64})$")
    kll: str = Field(min_length=4, max_length=MAX_SKETCH_B64)


class Payload(_Wire):
    agent_version: str = Field(max_length=64)
    agent_device_id: str | None = Field(default=None, max_length=128)
    channel: str | None = Field(default=None, max_length=64)
    active: Slot | None = None
    slots: list[Slot] = Field(default_factory=list, max_length=4)
    cycle: Cycle | None = None
    gate: dict[str, float | int | bool | str | None] = Field(default_factory=dict, max_length=32)
    hardware: Hardware
    sketches: list[Sketch] = Field(default_factory=list, max_length=64)


class Report(_Wire):
    """The signed statement of one device at one moment (Uptane's version manifest)."""

    device_id: str = Field(pattern=r"^d-[0-9a-f]{20}$")
    counter: int = Field(ge=1, lt=2**62)
    bundle_sha256: str | None = Field(pattern=_HEX64)
    created_at_ms: int = Field(ge=0)
    payload: Payload


class Enrollment(_Wire):
    public_key: str = Field(min_length=40, max_length=64)  # base64 of 32 raw bytes
    token: str = Field(min_length=8, max_length=128)
    created_at_ms: int = Field(ge=0)
    hardware: Hardware


def canonical_json(obj: Any) -> bytes:
    """One spelling per document: sorted keys, no whitespace, UTF-8, finite numbers only."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadReport(f"{what}: not valid base64") from None


def device_id_for(public_key: bytes) -> str:
    """A device's id follows from its key: enrolling the same key twice names one device."""
    return "d-" + hashlib.sha256(public_key).hexdigest()[:20]


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    raw = b64decode(text, "public_key")
    if len(raw) != 32:
        raise BadReport(f"public_key: expected 32 raw Ed25519 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_json(body: bytes, what: str) -> Any:
    """JSON from an untrusted body, or a one-line :class:`BadReport`."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadReport(f"{what}: not UTF-8") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise BadReport(f"{what}: malformed JSON ({exc})") from None
    except RecursionError:
        raise BadReport(f"{what}: JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def seal(key: Ed25519PrivateKey, field: str, document: dict[str, Any]) -> bytes:
    """The envelope body ``{field: canonical text, "signature": ...}`` for ``document``."""
    context = REPORT_CONTEXT if field == "report" else ENROLL_CONTEXT
    text = canonical_json(document)
    envelope = {"signature": b64encode(key.sign(context + text)), field: text.decode("utf-8")}
    return canonical_json(envelope)


def open_envelope(body: bytes, field: str) -> tuple[bytes, bytes, dict[str, Any]]:
    """``(signed text, signature, parsed document)`` of an envelope, not yet verified.

    The document is parsed only to find who claims to have signed it; nothing in it is
    trusted before :func:`verify`.
    """
    envelope = parse_json(body, "body")
    if (
        not isinstance(envelope, dict)
        or set(envelope) != {field, "signature"}
        or not isinstance(envelope[field], str)
        or not isinstance(envelope["signature"], str)
    ):
        raise BadReport(f'body: expected {{"{field}": "<canonical JSON text>", "signature": B64}}')
    text = envelope[field].encode("utf-8")
    signature = b64decode(envelope["signature"], "signature")
    if len(signature) != 64:
        raise BadReport(f"signature: expected 64 Ed25519 bytes, got {len(signature)}")
    document = parse_json(text, field)
    if not isinstance(document, dict):
        raise BadReport(f"{field}: expected a JSON object")
    if canonical_json(document) != text:
        raise BadReport(f"{field}: not canonical JSON (sorted keys, no spaces, UTF-8)")
    return text, signature, document


def verify(key: Ed25519PublicKey, field: str, text: bytes, signature: bytes) -> None:
    """Raise :class:`Unauthenticated` unless ``signature`` is ``key``'s over ``text``."""
    context = REPORT_CONTEXT if field == "report" else ENROLL_CONTEXT
    try:
        key.verify(signature, context + text)
    except InvalidSignature:
        raise Unauthenticated(
            f"{field}: the signature does not verify with the device's key"
        ) from None


def validate(model: type[_W], document: dict[str, Any], field: str) -> _W:
    """``document`` as ``model``, or a one-line :class:`BadReport` naming the first problem."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or field
        raise BadReport(f"{field}.{where}: {first['msg']}") from None
