"""The errors of model delivery (publishing, deltas, the device agent).

They hang under :class:`~edgeinfer.errors.EdgeInferError`::

    EdgeInferError
    └── DeliverError                 anything in edgeinfer.deliver
        ├── KeyStoreError            a key directory that is missing, incomplete or unsafe
        ├── PublishError             the repository cannot be written as asked
        ├── DeltaError               a delta that does not apply (wrong base, corrupt, ...)
        ├── UpdateRefused            untrusted or unusable remote data: bad signatures,
        │                            expired or replayed metadata, a hash or length mismatch,
        │                            an unsafe target name; never retried blindly
        ├── UpdateDownloadError      the transport failed (timeout, connection, HTTP status);
        │                            a partial download is kept to resume
        ├── DiskSpaceError           not enough free disk for the update
        └── AgentError               the agent itself cannot work (no trusted root, state
                                     directory unusable, another agent holds the lock)

As python-tuf keeps ``RepositoryError`` apart from ``DownloadError``, "the remote side is
bad" (:class:`UpdateRefused`) is kept apart from "the network failed"
(:class:`UpdateDownloadError`).
"""

from __future__ import annotations

from edgeinfer.errors import EdgeInferError

__all__ = [
    "AgentError",
    "DeliverError",
    "DeltaError",
    "DiskSpaceError",
    "KeyStoreError",
    "PublishError",
    "UpdateDownloadError",
    "UpdateRefused",
]


class DeliverError(EdgeInferError):
    """Root of the errors raised by :mod:`edgeinfer.deliver`."""


class KeyStoreError(DeliverError):
    """A key directory is missing, incomplete, or unsafe (e.g. inside the repository)."""


class PublishError(DeliverError):
    """The repository cannot be written as asked (bad bundle, version clash, missing keys)."""


class DeltaError(DeliverError):
    """A delta does not apply: wrong base, corrupt file, or a result with the wrong hash."""


class UpdateRefused(DeliverError):
    """Remote data failed verification or is unusable; the device keeps what it has."""


class UpdateDownloadError(DeliverError):
    """A download failed in transport; the partial file is kept so the next try resumes."""


class DiskSpaceError(DeliverError):
    """Not enough free disk space to download and install an update."""


class AgentError(DeliverError):
    """The agent cannot work at all (no trusted root, unusable state directory, lock held)."""
