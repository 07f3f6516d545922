"""The :class:`~edgeinfer.offload.generation.GenerativeOffloader`'s value types: its
configuration, the live estimates of each side, the :class:`OffloadedGeneration` it
returns (where each part ran) and the stream that yields it, and its counters."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Literal

from edgeinfer.errors import InputError
from edgeinfer.offload.breaker import BreakerConfig
from edgeinfer.placement import RobustEstimate

__all__ = [
    "GenerationEstimates",
    "GenerationPart",
    "GenerationStats",
    "GenerationStream",
    "GenerativeOffloaderConfig",
    "OffloadedGeneration",
    "Side",
]

Side = Literal["local", "remote"]


@dataclass(frozen=True)
class GenerativeOffloaderConfig:
    """How remote streams are watched and how estimates are kept fresh."""

    first_token_s: float = 5.0  # seconds the server may take to its first token
    gap_s: float = 0.5  # seconds without a token, after the first: the stream has stalled
    probe_after_s: float = 2.0  # seconds: an older RTT estimate is refreshed by a probe
    probe_timeout_s: float = 0.5  # seconds a probe (ready endpoint) may take
    explore_after_s: float | None = 30.0  # seconds after which an unused side is measured again
    # True: the device feeds the server's tokens to its model one at a time, as decoding
    # did (the same tokens as an uninterrupted run; one decoding step per token received);
    # False: in one pass with the prompt (faster; a quantized model may drift at a near tie)
    exact_resume: bool = True
    # True: while the server streams, the device feeds each token it receives to its own
    # model (on a thread), so a switch goes on at once instead of replaying them; it costs
    # the device one decoding step per token, as if it generated (off by default)
    follow: bool = False
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    window: int = 7  # samples in each estimate's median
    alpha: float = 0.5  # EWMA weight of a new median

    def __post_init__(self) -> None:
        for name in ("first_token_s", "gap_s", "probe_after_s", "probe_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"{name} {value!r} is invalid; expected seconds > 0")


class GenerationEstimates:
    """Time to first token and time per token of one side, from the generations it ran."""

    def __init__(self, window: int = 7, alpha: float = 0.5) -> None:
        self.prefill = RobustEstimate(window, alpha)  # seconds per prompt token to the first
        self.per_token = RobustEstimate(window, alpha)  # seconds per token after the first
        self.updated = float("-inf")  # clock time of the last observed generation

    def observe(
        self, prompt_tokens: int, ttft_s: float, tokens: int, decode_s: float, now: float
    ) -> None:
        """One generation: ``ttft_s`` to its first token, ``decode_s`` for the others."""
        self.prefill.add(max(ttft_s, 0.0) / max(prompt_tokens, 1), now)
        if tokens > 1 and decode_s > 0:
            self.per_token.add(decode_s / (tokens - 1), now)
        self.updated = now

    def ttft(self, prompt_tokens: int) -> float | None:
        rate = self.prefill.value
        return None if rate is None else rate * prompt_tokens

    @property
    def tokens_per_s(self) -> float | None:
        spt = self.per_token.value
        return None if not spt else 1.0 / spt

    def predict(self, prompt_tokens: int, max_tokens: int) -> float | None:
        """Expected seconds for a whole generation (``None``: never measured)."""
        ttft = self.ttft(prompt_tokens)
        if ttft is None:
            return None
        return ttft + (max_tokens - 1) * (self.per_token.value or 0.0)


@dataclass(frozen=True, slots=True)
class GenerationPart:
    """Generated tokens ``[start, end)`` and where they ran."""

    placement: Side
    start: int
    end: int
    remote: str | None = None  # the server's URL, for a remote part


@dataclass(frozen=True)
class OffloadedGeneration:
    """One finished generation, and where each part of it ran."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    placement: Side  # where it began
    parts: tuple[GenerationPart, ...]
    switched_at: int | None  # token index where the device took over; None: no switch
    reason: str  # why it began there (the policy's reason)
    fallback_reason: str | None  # why the server's stream was given up
    stop_reason: str  # one of edgeinfer.generate.STOP_REASONS
    ttft_s: float  # seconds from the call to the first token
    total_s: float  # seconds, the whole call

    @property
    def fallback(self) -> bool:
        return self.switched_at is not None

    @property
    def where(self) -> str:
        """``"local"``, ``"remote"``, or ``"remote -> local at token N"``."""
        if self.switched_at is None:
            return self.placement
        return f"remote -> local at token {self.switched_at}"


@dataclass
class GenerationStats:
    """Counters since the offloader was made."""

    requests: int = 0
    local: int = 0  # generations that began on the device
    remote: int = 0  # generations that began on a server
    fallbacks: int = 0  # server streams the device finished


def _nothing() -> Generator[str, None, None]:
    yield from ()


class GenerationStream(Iterator[str]):
    """Text pieces as they come, from wherever they run; ``.result`` once it ended."""

    def __init__(self) -> None:
        self.result: OffloadedGeneration | None = None
        self._it: Generator[str, None, None] = _nothing()

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop generating, here or on the server (its connection is closed)."""
        self._it.close()
