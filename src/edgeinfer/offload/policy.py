"""Placement policies: pure functions from a :class:`Situation` to a :class:`Decision`.

The offloader measures (``estimate.py``, ``energy.py``), lists the placements that could
run a request now as :class:`Option` s with their expected latency and device energy, and
asks a policy to pick one. A policy never touches the network, a clock or a model, so it
is tested as the function it is and costs microseconds::

    def my_policy(s: Situation) -> Decision:
        local = s.local
        if local is not None and (local.latency_s or 0) < 0.050:
            return Decision(local.placement, "local is fast enough")
        return latency(s)

    Offloader(local=model, remote=[server], policy=my_policy)

Built in: :func:`local`, :func:`remote`, :func:`latency` (least expected latency),
:func:`energy` (least device energy), :func:`deadline` (least energy that meets the
request's deadline), and the combinators :func:`battery_threshold` (below X% battery use
another policy: by default prefer offloading) and :func:`memory_budget` (a model too big
for the device goes to a server).

``latency`` and ``energy`` measure what they do not know (an option without an estimate
runs once) and re-measure a close runner-up whose estimate has grown old (see
:func:`_refresh`): estimates come from runs, and only the chosen placement runs.

Privacy is not a policy's business: :func:`decide` removes every option that would send raw
inputs off the device before a policy sees a private request, and checks the answer.
A :class:`Placement` is a kind (``"local"``, ``"remote"``, ``"split"``) plus which remote
and, for a split, which cut point; a split option (head on the device, tail on a server)
sends features, not raw inputs, so it stays open to private requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeinfer.errors import InputError
from edgeinfer.offload.errors import NoPlacementError
from edgeinfer.placement import Option, Placement, PlacementKind

__all__ = [
    "POLICIES",
    "Decision",
    "Option",
    "Placement",
    "PlacementKind",
    "Policy",
    "Situation",
    "battery_threshold",
    "deadline",
    "decide",
    "energy",
    "get_policy",
    "latency",
    "local",
    "memory_budget",
    "remote",
]

LOCAL = Placement("local")


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything a policy may look at for one request."""

    options: tuple[Option, ...]  # what can run now (remotes with an open breaker are left out)
    deadline_s: float | None = None  # seconds the caller gives this request; None: no deadline
    private: bool = False  # the inputs must not leave the device raw
    battery: float | None = None  # charge in [0, 1]; None: unknown or on mains
    model_bytes: int | None = None  # size of the local model; None: unknown

    @property
    def local(self) -> Option | None:
        for o in self.options:
            if o.placement.kind == "local":
                return o
        return None

    @property
    def remotes(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.placement.kind != "local")


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's answer: where to run, and why (shown in ``Prediction.reason``)."""

    placement: Placement
    reason: str


Policy = Callable[[Situation], Decision]


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _name(o: Option) -> str:
    return o.label or str(o.placement)


def _unmeasured(s: Situation, attr: str) -> Decision | None:
    """Measure an option before comparing it: unknown beats guessing (local first)."""
    for o in s.options:
        if getattr(o, attr) is None:
            return Decision(o.placement, f"no estimate for {_name(o)} yet: measuring it")
    return None


# A close runner-up's estimate is re-measured once it is older than REFRESH_FACTOR times its
# own expected latency, clamped to [REFRESH_MIN_S, REFRESH_MAX_S]: one request in about
# REFRESH_FACTOR pays at most CLOSE times the best, so refreshing costs about 1% of the time.
REFRESH_FACTOR = 50.0
REFRESH_MIN_S = 0.25  # seconds
REFRESH_MAX_S = 10.0  # seconds
CLOSE = 1.5  # a runner-up within this factor of the best is a close call


def _refresh(
    s: Situation, best: Option, attr: str, unit: Callable[[float], str]
) -> Decision | None:
    """Re-measure a close runner-up whose estimate is old, instead of trusting it.

    Only the placement that runs is measured; a runner-up that looked slower once (a busy
    moment) would otherwise never get the chance to look faster again.
    """
    b = getattr(best, attr) or 0.0
    for o in s.options:
        v = getattr(o, attr)
        if o is best or v is None or v > CLOSE * b:
            continue
        after = min(REFRESH_MAX_S, max(REFRESH_MIN_S, REFRESH_FACTOR * (o.latency_s or 0.0)))
        if o.age_s > after:
            return Decision(
                o.placement,
                f"re-measuring {_name(o)} ({unit(v)}, close to {_name(best)} {unit(b)}; "
                f"estimate {o.age_s:.1f} s old)",
            )
    return None


def _joules(value: float | None) -> str:
    return f"{value or 0.0:.3g} J"


def _only(s: Situation) -> Decision | None:
    if len(s.options) == 1:
        o = s.options[0]
        return Decision(o.placement, f"{_name(o)} is the only placement available")
    return None


def local(s: Situation) -> Decision:
    """Always on the device (a server only if there is no local model)."""
    o = s.local
    if o is not None:
        return Decision(o.placement, "policy: local")
    first = s.options[0]
    return Decision(first.placement, f"policy local, but no local model: {_name(first)}")


def remote(s: Situation) -> Decision:
    """Offload whenever a server is available (the fastest one known); else local."""
    remotes = s.remotes
    if not remotes:
        return Decision(LOCAL, "policy remote, but no server is available: local")
    best = min(remotes, key=lambda o: float("inf") if o.latency_s is None else o.latency_s)
    return Decision(best.placement, f"policy: remote ({_name(best)})")


def latency(s: Situation) -> Decision:
    """The option with the least expected latency."""
    d = _only(s) or _unmeasured(s, "latency_s")
    if d is not None:
        return d
    best = min(s.options, key=lambda o: o.latency_s or 0.0)
    d = _refresh(s, best, "latency_s", _ms)
    if d is not None:
        return d
    others = ", ".join(f"{_name(o)} {_ms(o.latency_s)}" for o in s.options if o is not best)
    return Decision(best.placement, f"latency: {_name(best)} {_ms(best.latency_s)} < {others}")


def energy(s: Situation) -> Decision:
    """The option that costs the device the least energy."""
    d = _only(s) or _unmeasured(s, "energy_j")
    if d is not None:
        return d
    best = min(s.options, key=lambda o: o.energy_j or 0.0)
    d = _refresh(s, best, "energy_j", _joules)
    if d is not None:
        return d
    others = ", ".join(f"{_name(o)} {o.energy_j or 0.0:.3g} J" for o in s.options if o is not best)
    return Decision(
        best.placement, f"energy: {_name(best)} {best.energy_j or 0.0:.3g} J < {others}"
    )


def deadline(s: Situation) -> Decision:
    """The least energy among options expected to meet the deadline; else the fastest."""
    if s.deadline_s is None:
        return energy(s)
    d = _only(s) or _unmeasured(s, "latency_s")
    if d is not None:
        return d
    meets = [o for o in s.options if (o.latency_s or 0.0) <= s.deadline_s]
    if not meets:
        fast = latency(s)
        return Decision(
            fast.placement, f"deadline {_ms(s.deadline_s)}: nothing meets it; {fast.reason}"
        )
    best = min(meets, key=lambda o: float("inf") if o.energy_j is None else o.energy_j)
    return Decision(
        best.placement,
        f"deadline {_ms(s.deadline_s)}: {_name(best)} meets it ({_ms(best.latency_s)}) "
        f"with the least energy ({best.energy_j or 0.0:.3g} J)",
    )


def battery_threshold(
    below: float = 0.2, *, low: Policy = remote, otherwise: Policy = latency
) -> Policy:
    """Use ``low`` while the battery is under ``below`` (0..1), else ``otherwise``.

    An unknown battery level (no battery, on mains) counts as not low.
    """
    if not 0.0 <= below <= 1.0:
        raise InputError(f"battery threshold {below!r} must be a fraction in [0, 1]")

    def policy(s: Situation) -> Decision:
        if s.battery is not None and s.battery < below:
            d = low(s)
            return Decision(d.placement, f"battery {s.battery:.0%} < {below:.0%}: {d.reason}")
        return otherwise(s)

    policy.__name__ = f"battery_threshold({below:g})"
    return policy


def memory_budget(budget_bytes: int, *, then: Policy = latency) -> Policy:
    """Offload a model larger than ``budget_bytes``; otherwise decide with ``then``."""

    def policy(s: Situation) -> Decision:
        if s.model_bytes is not None and s.model_bytes > budget_bytes:
            d = remote(s)
            return Decision(
                d.placement,
                f"model {s.model_bytes} bytes > device budget {budget_bytes}: {d.reason}",
            )
        return then(s)

    policy.__name__ = f"memory_budget({budget_bytes})"
    return policy


POLICIES: dict[str, Policy] = {
    "local": local,
    "remote": remote,
    "latency": latency,
    "energy": energy,
    "deadline": deadline,
}


def get_policy(policy: str | Policy) -> Policy:
    """A policy by name (``"latency"``, ...) or the callable itself."""
    if callable(policy):
        return policy
    try:
        return POLICIES[policy]
    except KeyError:
        raise InputError(
            f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)} or a callable"
        ) from None


def decide(policy: Policy, s: Situation) -> Decision:
    """Apply ``policy`` with privacy enforced: private raw inputs never leave the device.

    Raises :class:`NoPlacementError` when no option is left.
    """
    if s.private:
        allowed = tuple(o for o in s.options if not o.sends_raw)
        if len(allowed) != len(s.options):
            s = Situation(allowed, s.deadline_s, True, s.battery, s.model_bytes)
    if not s.options:
        raise NoPlacementError(
            "nowhere to run this request: "
            + (
                "the inputs are private and there is no local model"
                if s.private
                else "no local model and no server is reachable"
            )
        )
    d = policy(s)
    if not any(o.placement == d.placement for o in s.options):
        if s.private:  # a user policy asked for something privacy rules out
            safe = s.options[0]
            return Decision(safe.placement, f"private inputs stay on the device ({d.reason})")
        raise InputError(
            f"policy {getattr(policy, '__name__', policy)!r} chose {d.placement}, which is not "
            f"one of the available placements ({', '.join(str(o.placement) for o in s.options)})"
        )
    return d
