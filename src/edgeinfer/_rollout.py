"""Which devices a staged rollout reaches: the one bucket rule both sides share.

The publisher's TUF targets (``deliver``) carry a rollout share, and the fleet's signed
rollout documents (``fleet``) pace a release by share too; a device must land in the same
bucket for both, so the rule lives here, below both, as a leaf anyone may import.
"""

from __future__ import annotations

import hashlib

__all__ = ["rollout_bucket"]


def rollout_bucket(device_id: str, model: str) -> float:
    """A stable number in [0, 100) for this device and model: the rollout percentile.

    A device is in a rollout of ``p`` percent when its bucket is below ``p``; widening the
    rollout keeps every device that was already in.
    """
    digest = hashlib.sha256(f"{model}\x00{device_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % 10000) / 100.0
