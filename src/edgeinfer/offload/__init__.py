"""Offloading: per request, run a model on the device or on an edge server.

* :mod:`.remote`: :class:`RemoteModel`, an Open Inference Protocol client with ``Model``'s
  ``predict`` (HTTP or gRPC transports, JSON or binary tensors);
* :mod:`.estimate`: live, robust estimates of local and remote latency, RTT, bandwidth,
  server time and success rate; :mod:`.energy`: the device's energy model and battery;
* :mod:`.policy`: placement policies, pure functions of the estimates;
* :mod:`.breaker` and :mod:`.retry`: circuit breakers, retry budget, backoff;
* :mod:`.splits`: split placements (head on the device, tail on a remote) as options;
* :mod:`.offloader`: :class:`Offloader`, which ties them together and never fails because
  the network did, and follows hot-swapped local models; :mod:`.errors`: the
  ``RemoteError`` tree;
* :mod:`.generation`: :class:`GenerativeOffloader`, the same for a language model, whose
  streams the device finishes when the network breaks them off (:mod:`.remote_generate`:
  the streaming client).
"""

from __future__ import annotations

from edgeinfer.offload.breaker import BreakerConfig, BreakerState, CircuitBreaker
from edgeinfer.offload.energy import Battery, DeviceProfile
from edgeinfer.offload.errors import (
    NoPlacementError,
    OffloadError,
    RemoteConnectTimeout,
    RemoteError,
    RemoteProtocolError,
    RemoteRefused,
    RemoteRejected,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
)
from edgeinfer.offload.generation import (
    GenerativeOffloader,
    GenerativeOffloaderConfig,
    OffloadedGeneration,
)
from edgeinfer.offload.offloader import Offloader, OffloaderConfig, OffloadStats, Prediction
from edgeinfer.offload.policy import POLICIES, Decision, Option, Placement, Situation
from edgeinfer.offload.remote import RemoteModel, RemoteResult
from edgeinfer.offload.retry import RetryBudget, RetryConfig

__all__ = [
    "POLICIES",
    "Battery",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Decision",
    "DeviceProfile",
    "GenerativeOffloader",
    "GenerativeOffloaderConfig",
    "NoPlacementError",
    "OffloadError",
    "OffloadStats",
    "OffloadedGeneration",
    "Offloader",
    "OffloaderConfig",
    "Option",
    "Placement",
    "Prediction",
    "RemoteConnectTimeout",
    "RemoteError",
    "RemoteModel",
    "RemoteProtocolError",
    "RemoteRefused",
    "RemoteRejected",
    "RemoteResult",
    "RemoteServerError",
    "RemoteTimeout",
    "RemoteUnavailable",
    "RetryBudget",
    "RetryConfig",
    "Situation",
]
