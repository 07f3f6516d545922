"""A clear local decision held for a moment, so a tiny model does not pay for deciding.

Deciding costs about 10 microseconds (an estimate for every placement, then the policy);
a model that runs in 40 microseconds on the device would pay 25% for it on every request.
When the device wins by a wide margin (every other placement is expected to take at least
:data:`MARGIN` times as long *and* as much device energy), the next requests of the same
signature and privacy keep that decision for up to :data:`HOLD_S` seconds, as long as the
local estimate stays below the level at which the margin would shrink under
:data:`MARGIN`. Nothing else is cached: a request with a deadline, another model (a hot
swap), a user-supplied policy, or the first request after :data:`HOLD_S` decides afresh
from the live estimates, which also starts any probe that has come due.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeinfer.offload.estimate import Signature
from edgeinfer.offload.policy import POLICIES, Decision, Policy, Situation

__all__ = ["HOLD_S", "MARGIN", "Sticky", "stick"]

MARGIN = 2.0  # every other placement must be this many times slower and costlier
HOLD_S = 0.1  # seconds a held decision lasts at most
_HOLDABLE = frozenset(id(POLICIES[name]) for name in ("local", "latency", "energy"))


@dataclass(frozen=True, slots=True)
class Sticky:
    """A local decision that stands while nothing could change it."""

    sig: Signature
    private: bool
    model: Any  # the local model it was made for
    decision: Decision
    bound_s: float  # the local estimate may grow to this before deciding again
    until: float  # perf_counter() time after which it lapses

    def holds(
        self,
        sig: Signature,
        private: bool,
        model: Any,
        now: float,
        local_s: float | None,
        deadline: float | None = None,
    ) -> bool:
        """True if a request with these particulars may take :attr:`decision` as it is."""
        return (
            deadline is None
            and now < self.until
            and model is self.model
            and private is self.private
            and local_s is not None
            and local_s <= self.bound_s
            and sig == self.sig
        )


def stick(
    policy: Policy,
    situation: Situation,
    decision: Decision,
    sig: Signature,
    model: Any,
    now: float,
) -> Sticky | None:
    """The :class:`Sticky` for this decision, or ``None`` when it must not be held."""
    if (
        decision.placement.kind != "local"
        or situation.deadline_s is not None
        or id(policy) not in _HOLDABLE
        or model is None
    ):
        return None
    here = situation.local
    if here is None or not here.latency_s or not here.energy_j:
        return None
    ratio = float("inf")
    for o in situation.options:
        if o is here:
            continue
        if o.latency_s is None or o.energy_j is None:
            return None  # an unmeasured placement: the policy wants to measure it soon
        ratio = min(ratio, o.latency_s / here.latency_s, o.energy_j / here.energy_j)
    if ratio < MARGIN:
        return None
    bound = here.latency_s * min(ratio / MARGIN, 1e6)
    return Sticky(sig, situation.private, model, decision, bound, now + HOLD_S)
