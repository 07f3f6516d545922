"""The publisher's signing keys: one ed25519 key (or a threshold of them) per TUF role.

A key directory holds ``keys.json`` (public keys, thresholds, which keys are active) and one
PKCS#8 PEM file per private key, readable by the owner only. It never lives inside the
repository directory, which is served to the world (:meth:`KeyStore.init` and
:meth:`KeyStore.rotate` refuse a directory inside anything laid out as a repository,
``metadata/`` holding TUF root or timestamp metadata)::

    keys/
      keys.json                 {"roles": {"root": {"threshold": 1, "keys": [keyid]}, ...},
                                 "keys": {keyid: {"role", "file", "public", "status"}}}
      root-1a2b3c4d5e6f.pem     private keys (mode 0600)
      targets-...pem

Keys are generated and used through securesystemslib's ``CryptoSigner``, as python-tuf does.
``rotate(role)`` makes new keys and marks the old ones *retired*: a retired root key still
signs the next root version (a root rotation must carry the old threshold too), after which
:meth:`KeyStore.forget_retired` deletes it.

>>> store = KeyStore.init("keys", thresholds={"root": 2})      # doctest: +SKIP
>>> store.signers("targets")                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer._atomic import write_atomic
from edgeinfer.deliver.errors import KeyStoreError

__all__ = ["ROLES", "KeyInfo", "KeyStore", "parse_thresholds", "repository_around"]

ROLES = ("root", "targets", "snapshot", "timestamp")
KEYS_FILE = "keys.json"
_FORMAT = 1
_MAX_THRESHOLD = 16


@dataclass(frozen=True)
class KeyInfo:
    """One key in the store."""

    keyid: str
    role: str
    file: str  # private key file name inside the key directory
    public: dict[str, Any]  # the public key as TUF writes it into root metadata
    status: str  # "active" or "retired"


def parse_thresholds(items: list[str] | None) -> dict[str, int]:
    """``["root=2", "targets=1"]`` -> ``{"root": 2, "targets": 1}``."""
    out: dict[str, int] = {}
    for item in items or []:
        role, sep, value = item.partition("=")
        role = role.strip()
        if not sep or role not in ROLES or not value.strip().isdigit():
            raise KeyStoreError(
                f"--threshold {item!r}: expected ROLE=N with ROLE one of {', '.join(ROLES)} "
                "and N >= 1, e.g. root=2"
            )
        n = int(value)
        if not 1 <= n <= _MAX_THRESHOLD:
            raise KeyStoreError(f"--threshold {item!r}: N must be between 1 and {_MAX_THRESHOLD}")
        out[role] = n
    return out


def repository_around(path: str | os.PathLike[str]) -> Path | None:
    """The repository directory that holds ``path`` (or is it), found by its layout."""
    here = Path(path).resolve()
    for d in (here, *here.parents):
        md = d / "metadata"
        if md.is_dir() and (
            (md / "timestamp.json").is_file()
            or (md / "root.json").is_file()
            or any(md.glob("*.root.json"))
        ):
            return d
    return None


def _refuse_inside_repository(path: Path) -> None:
    repo = repository_around(path)
    if repo is not None:
        raise KeyStoreError(
            f"key directory {path} is inside the repository {repo}, which is served to the "
            "world; keep private keys elsewhere"
        )


class KeyStore:
    """A directory of signing keys for the four top-level TUF roles."""

    def __init__(self, path: Path, thresholds: dict[str, int], keys: dict[str, KeyInfo]) -> None:
        self.path = path
        self.thresholds = thresholds
        self.keys = keys

    def __repr__(self) -> str:
        return f"KeyStore('{self.path}', thresholds={self.thresholds})"

    # ------------------------------------------------------------ create / open
    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        thresholds: Mapping[str, int] | None = None,
        *,
        force: bool = False,
    ) -> KeyStore:
        """Generate fresh keys: ``threshold`` ed25519 keys per role (default 1)."""
        root = Path(path)
        _refuse_inside_repository(root)
        if (root / KEYS_FILE).exists() and not force:
            raise KeyStoreError(
                f"{root} already holds keys ({KEYS_FILE}); refusing to overwrite them "
                "(use 'edgeinfer keys rotate ROLE' to replace keys, or --force)"
            )
        wanted = {role: 1 for role in ROLES}
        for role, n in (thresholds or {}).items():
            if role not in ROLES:
                raise KeyStoreError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
            if not 1 <= n <= _MAX_THRESHOLD:
                raise KeyStoreError(f"threshold for {role} must be 1..{_MAX_THRESHOLD}, got {n}")
            wanted[role] = n
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        if force:
            for old in root.glob("*.pem"):
                old.unlink()
        store = cls(root, wanted, {})
        for role in ROLES:
            for _ in range(wanted[role]):
                store._generate(role)
        store.save()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> KeyStore:
        """Read a key directory written by :meth:`init`."""
        root = Path(path)
        index = root / KEYS_FILE
        if not index.is_file():
            raise KeyStoreError(
                f"{root}: no key store here ({KEYS_FILE} missing); create one with "
                f"'edgeinfer keys init --keys {root}'"
            )
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            thresholds = {r: int(data["roles"][r]["threshold"]) for r in ROLES}
            keys = {
                keyid: KeyInfo(
                    keyid, str(k["role"]), str(k["file"]), dict(k["public"]), str(k["status"])
                )
                for keyid, k in data["keys"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{index}: not a valid key store ({exc})") from None
        for info in keys.values():
            if info.role not in ROLES or "/" in info.file or info.file.startswith("."):
                raise KeyStoreError(f"{index}: key {info.keyid[:12]} has a bad role or file")
        return cls(root, thresholds, keys)

    # ------------------------------------------------------------ queries
    def key_infos(self, role: str, *, status: str = "active") -> list[KeyInfo]:
        self._check_role(role)
        return sorted(
            (k for k in self.keys.values() if k.role == role and k.status == status),
            key=lambda k: k.keyid,
        )

    def public_keys(self, role: str) -> list[Any]:
        """The role's active public keys as securesystemslib ``Key`` objects."""
        from securesystemslib.signer import Key  # type: ignore[attr-defined]

        return [Key.from_dict(k.keyid, dict(k.public)) for k in self.key_infos(role)]

    def signers(self, role: str, *, retired: bool = False) -> list[Any]:
        """``CryptoSigner`` objects for the role's active keys (plus retired ones if asked)."""
        infos = self.key_infos(role)
        if retired:
            infos += self.key_infos(role, status="retired")
        return [self._signer(k) for k in infos]

    def all_signers(self) -> list[Any]:
        """Every signer in the store, active and retired, of every role."""
        return [self._signer(k) for k in sorted(self.keys.values(), key=lambda k: k.keyid)]

    def check(self) -> None:
        """Raise :class:`KeyStoreError` unless every role holds a threshold of active keys."""
        for role in ROLES:
            have, need = len(self.key_infos(role)), self.thresholds[role]
            if have < need:
                raise KeyStoreError(
                    f"{self.path}: {role} has {have} active key(s) but its threshold is {need}; "
                    f"restore the missing keys or run 'edgeinfer keys rotate {role}'"
                )

    # ------------------------------------------------------------ changes
    def rotate(self, role: str) -> list[str]:
        """Replace the role's active keys by new ones; the old ones become retired.

        Returns the new key ids. The change reaches devices with the next published root
        (``edgeinfer publish --refresh`` or ``keys rotate --repo``).
        """
        self._check_role(role)
        _refuse_inside_repository(self.path)
        for info in self.key_infos(role):
            self.keys[info.keyid] = KeyInfo(info.keyid, role, info.file, info.public, "retired")
        new = [self._generate(role) for _ in range(self.thresholds[role])]
        self.save()
        return new

    def forget_retired(self, role: str | None = None) -> list[str]:
        """Delete retired keys (of one role, or all) once no metadata needs them to sign."""
        gone = []
        for info in list(self.keys.values()):
            if info.status == "retired" and (role is None or info.role == role):
                (self.path / info.file).unlink(missing_ok=True)
                del self.keys[info.keyid]
                gone.append(info.keyid)
        if gone:
            self.save()
        return gone

    def save(self) -> None:
        roles = {
            r: {"threshold": self.thresholds[r], "keys": [k.keyid for k in self.key_infos(r)]}
            for r in ROLES
        }
        data = {
            "format": _FORMAT,
            "roles": roles,
            "keys": {
                k.keyid: {"role": k.role, "file": k.file, "public": k.public, "status": k.status}
                for k in sorted(self.keys.values(), key=lambda k: k.keyid)
            },
        }
        _write_private(self.path / KEYS_FILE, (json.dumps(data, indent=2) + "\n").encode())

    # ------------------------------------------------------------ internals
    def _generate(self, role: str) -> str:
        from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

        signer = CryptoSigner.generate_ed25519()
        key = signer.public_key
        fname = f"{role}-{key.keyid[:12]}.pem"
        _write_private(self.path / fname, signer.private_bytes)
        self.keys[key.keyid] = KeyInfo(key.keyid, role, fname, key.to_dict(), "active")
        return str(key.keyid)

    def _signer(self, info: KeyInfo) -> Any:
        from securesystemslib.signer import CryptoSigner, Key  # type: ignore[attr-defined]

        path = self.path / info.file
        if not path.is_file():
            raise KeyStoreError(f"{path}: private key of {info.role} key {info.keyid[:12]} missing")
        try:
            return CryptoSigner.from_priv_key_uri(
                f"file2:{path}", Key.from_dict(info.keyid, dict(info.public))
            )
        except (ValueError, OSError) as exc:
            raise KeyStoreError(f"{path}: unusable private key ({exc})") from None

    @staticmethod
    def _check_role(role: str) -> None:
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def _write_private(path: Path, data: bytes) -> None:
    """Write owner-only, atomically (a crash never leaves half a key file)."""
    write_atomic(path, data, mode=0o600)
