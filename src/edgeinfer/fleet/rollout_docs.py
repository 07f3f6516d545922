"""The signed rollout document: how a stage decision reaches devices as data they verify.

The fleet signs, with its own Ed25519 *rollout* key (never a release key), the canonical
JSON of::

    {"type": "edgeinfer-rollout", "model": "digits", "version": 3,
     "target": {"sha256": "<hex>", "length": 123456} | null,
     "state": "running", "stage": 0, "stages": [5, 25, 100], "share_bp": 500,
     "selection": "sha256(model NUL device_id)[:8] mod 10000 < share_bp",
     "doc_version": 1000004, "issued_at_ms": ..., "expires_at_ms": ...}

in an envelope ``{"rollout": TEXT, "signature": B64}`` (as reports travel, with its own
domain-separation prefix). Devices pin the key's public half and check the signature, the
model, the expiry and that ``doc_version`` never goes back; then the document can only say
*how many* devices may install a version TUF already verified (``share_bp``: 0 when halted
or aborted), never *what* to install: it names a TUF target by version and hash, and the
device installs nothing TUF did not verify. Both sides use this module; no I/O here.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeinfer.fleet import reports as wire
from edgeinfer.fleet.errors import BadReport, BadRolloutDocument

__all__ = [
    "ROLLOUT_CONTEXT",
    "SELECTION",
    "RolloutDocument",
    "Target",
    "load_public_key",
    "open_document",
    "public_key_b64",
    "seal_document",
]

ROLLOUT_CONTEXT = b"edgeinfer-fleet-rollout-v1\n"
SELECTION = "sha256(model NUL device_id)[:8] mod 10000 < share_bp"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Target(_Doc):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    length: int = Field(ge=0)  # bytes


class RolloutDocument(_Doc):
    type: Literal["edgeinfer-rollout"]
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
    version: int = Field(ge=0)
    target: Target | None
    state: Literal["running", "paused", "halted", "aborted", "done"]
    stage: int = Field(ge=0)
    stages: list[float] = Field(min_length=1, max_length=20)
    share_bp: int = Field(ge=0, le=10000)  # basis points of the model's devices let through
    selection: Literal["sha256(model NUL device_id)[:8] mod 10000 < share_bp"]
    doc_version: int = Field(ge=1)
    issued_at_ms: int = Field(ge=0)
    expires_at_ms: int = Field(ge=0)


def seal_document(key: Ed25519PrivateKey, document: dict[str, Any]) -> bytes:
    """The envelope of ``document`` signed with the fleet's rollout key."""
    RolloutDocument.model_validate(document)  # the service never signs a malformed one
    text = wire.canonical_json(document)
    signature = key.sign(ROLLOUT_CONTEXT + text)
    return wire.canonical_json(
        {"rollout": text.decode("utf-8"), "signature": wire.b64encode(signature)}
    )


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return wire.b64encode(raw)


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """A pinned rollout key: base64 of the 32 raw bytes (what ``GET /v1/rollout-key``
    shows), or a PEM public key."""
    data = text.encode("ascii") if isinstance(text, str) else text
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, Ed25519PublicKey):
                raise BadRolloutDocument("rollout key: not an Ed25519 public key")
            return key
        return wire.public_key_from_b64(data.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError, BadReport) as exc:
        raise BadRolloutDocument(
            f"rollout key: expected base64 of 32 bytes or PEM ({exc})"
        ) from None


def open_document(
    body: bytes,
    key: Ed25519PublicKey,
    model: str,
    *,
    now_ms: int | None = None,
    min_doc_version: int = 0,
) -> RolloutDocument:
    """The document in ``body`` once verified, or a one-line :class:`BadRolloutDocument`.

    Checked in trust order: the envelope, the signature over the exact text, then the
    fields (canonical, the model asked for, not expired, ``doc_version`` not older than
    ``min_doc_version``, the newest the device has followed: a replayed old document
    cannot reopen a halted rollout).
    """
    try:
        text, signature, document = wire.open_envelope(body, "rollout")
    except BadReport as exc:
        raise BadRolloutDocument(f"rollout document: {exc}") from None
    try:
        key.verify(signature, ROLLOUT_CONTEXT + text)
    except InvalidSignature:
        raise BadRolloutDocument(
            "rollout document: the signature does not verify with the pinned rollout key"
        ) from None
    try:
        doc = RolloutDocument.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRolloutDocument(f"rollout document: {where}: {first['msg']}") from None
    if doc.model != model:
        raise BadRolloutDocument(f"rollout document: for model {doc.model!r}, expected {model!r}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if doc.expires_at_ms <= now:
        raise BadRolloutDocument(
            f"rollout document: expired {(now - doc.expires_at_ms) / 1000:.0f} s ago"
        )
    if doc.doc_version < min_doc_version:
        raise BadRolloutDocument(
            f"rollout document: version {doc.doc_version} is older than the "
            f"{min_doc_version} already followed"
        )
    return doc
