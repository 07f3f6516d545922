"""What a model target looks like in TUF targets metadata, for the publisher and the agent.

Each target carries edgeinfer's fields under ``custom.edgeinfer``; the signed targets
metadata therefore vouches for them too. Two kinds::

    models/<name>/<name>-<version>.tar      kind "bundle": a packed bundle
        {"kind": "bundle", "model": name, "version": 2, "channels": ["stable"],
         "rollout_bp": 1000, "min_agent_version": "0.1.0", "format": "onnx",
         "unpacked_bytes": 123456}
    deltas/<name>/<name>-<from>-<to>.delta  kind "delta": turns one exact bundle into another
        {"kind": "delta", "model": name, "from_version": 1, "to_version": 2,
         "base_sha256": ..., "base_length": ..., "target_path": "models/...", "method": "tensor"}

``rollout_bp`` is the rollout in basis points (1000 = 10%): canonical JSON, which TUF signs,
has no floating-point numbers. The agent parses these strictly (:func:`parse_target`): a
target whose path or fields do not fit is refused with the reason, never half-used. Target
paths are also checked for ``..``, absolute paths and odd characters, although the agent
never names a local file after a target path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgeinfer._rollout import rollout_bucket

__all__ = [
    "BundleTarget",
    "DeltaTarget",
    "bundle_path",
    "delta_path",
    "parse_target",
    "parse_version",
    "rollout_bucket",
]

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_BUNDLE_RE = re.compile(rf"^models/(?P<name>{_NAME})/(?P=name)-(?P<version>[0-9]{{1,18}})\.tar$")
_DELTA_RE = re.compile(
    rf"^deltas/(?P<name>{_NAME})/(?P=name)-(?P<src>[0-9]{{1,18}})-(?P<dst>[0-9]{{1,18}})\.delta$"
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def bundle_path(name: str, version: int) -> str:
    return f"models/{name}/{name}-{version}.tar"


def delta_path(name: str, from_version: int, to_version: int) -> str:
    return f"deltas/{name}/{name}-{from_version}-{to_version}.delta"


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.1.0"`` -> ``(0, 1, 0)``; raises ``ValueError`` for anything else."""
    parts = text.strip().split(".")
    if not text.strip() or not all(p.isdigit() for p in parts):
        raise ValueError(f"version {text!r} is not dotted integers like '0.1.0'")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class BundleTarget:
    path: str
    sha256: str
    length: int  # bytes
    model: str
    version: int
    channels: tuple[str, ...]
    rollout: float  # percent of devices, 0..100
    min_agent_version: str | None
    unpacked_bytes: int  # bytes the bundle takes once unpacked


@dataclass(frozen=True)
class DeltaTarget:
    path: str
    sha256: str
    length: int  # bytes
    model: str
    from_version: int
    to_version: int
    base_sha256: str
    base_length: int  # bytes
    target_path: str
    method: str


def _sha256_of(hashes: Any, path: str) -> str:
    digest = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ValueError(f"target {path!r} has no sha256 hash")
    return digest


def _int(fields: dict[str, Any], key: str, lo: int = 0) -> int:
    value = fields.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"field {key!r} must be an integer >= {lo}, got {value!r}")
    return value


def parse_target(path: str, length: int, hashes: Any, custom: Any) -> BundleTarget | DeltaTarget:
    """Validate one target entry; raises ``ValueError`` naming what is wrong."""
    if not isinstance(path, str) or path.startswith("/") or "\\" in path:
        raise ValueError(f"target name {path!r} is not a relative URL path")
    if ".." in path.split("/") or "//" in path or path.startswith("./"):
        raise ValueError(f"target name {path!r} escapes its directory ('..' or empty parts)")
    fields = custom.get("edgeinfer") if isinstance(custom, dict) else None
    if not isinstance(fields, dict):
        raise ValueError(f"target {path!r} has no edgeinfer fields")
    digest = _sha256_of(hashes, path)
    kind = fields.get("kind")
    if kind == "bundle":
        m = _BUNDLE_RE.match(path)
        if m is None:
            raise ValueError(f"bundle target name {path!r} is not models/NAME/NAME-VERSION.tar")
        version = _int(fields, "version")
        if fields.get("model") != m["name"] or version != int(m["version"]):
            raise ValueError(f"bundle target {path!r}: model/version fields disagree with name")
        channels = fields.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ValueError(f"bundle target {path!r}: channels must be a list of names")
        bp = fields.get("rollout_bp", 10000)
        if not isinstance(bp, int) or isinstance(bp, bool) or not 0 <= bp <= 10000:
            raise ValueError(f"bundle target {path!r}: rollout_bp must be an integer 0..10000")
        min_agent = fields.get("min_agent_version")
        if min_agent is not None:
            if not isinstance(min_agent, str):
                raise ValueError(f"bundle target {path!r}: min_agent_version must be a string")
            parse_version(min_agent)
        return BundleTarget(
            path,
            digest,
            length,
            m["name"],
            version,
            tuple(channels),
            bp / 100.0,
            min_agent,
            _int(fields, "unpacked_bytes"),
        )
    if kind == "delta":
        m = _DELTA_RE.match(path)
        if m is None:
            raise ValueError(f"delta target name {path!r} is not deltas/NAME/NAME-A-B.delta")
        src, dst = _int(fields, "from_version"), _int(fields, "to_version")
        if fields.get("model") != m["name"] or (src, dst) != (int(m["src"]), int(m["dst"])):
            raise ValueError(f"delta target {path!r}: fields disagree with its name")
        base = fields.get("base_sha256")
        if not isinstance(base, str) or not _HEX64.match(base):
            raise ValueError(f"delta target {path!r}: base_sha256 must be 64 hex digits")
        target_path = fields.get("target_path")
        if target_path != bundle_path(m["name"], dst):
            raise ValueError(f"delta target {path!r}: target_path {target_path!r} is wrong")
        method = fields.get("method")
        if not isinstance(method, str):
            raise ValueError(f"delta target {path!r}: method must be a string")
        return DeltaTarget(
            path,
            digest,
            length,
            m["name"],
            src,
            dst,
            base,
            _int(fields, "base_length"),
            target_path,
            method,
        )
    raise ValueError(f"target {path!r}: unknown kind {kind!r} (expected 'bundle' or 'delta')")
