"""What a generation is asked for (:class:`GenerateOptions`) and what it gives back
(:class:`Generation`). Pure values: checked once here, before any token is produced, so a
bad parameter is a one-line :class:`~edgeinfer.errors.InputError`, never a runtime's
exception halfway through a stream."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeinfer.errors import InputError

__all__ = ["ROLES", "STOP_REASONS", "GenerateOptions", "Generation", "check_messages"]

# Why a generation ended: the model's end-of-sequence token, a stop string, max_tokens,
# the model's context filled up, or the caller closed the stream.
STOP_REASONS = ("eos", "stop", "max_tokens", "context", "cancelled")
ROLES = ("system", "user", "assistant", "tool")
_MAX_STOPS = 16
_MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class GenerateOptions:
    """How to continue a prompt. ``temperature=0`` is greedy (deterministic) decoding."""

    max_tokens: int = 128  # tokens generated at most (the context may end it sooner)
    temperature: float = 0.0  # 0: greedy; > 0: sample from softmax(logits / temperature)
    top_p: float = 1.0  # nucleus sampling: smallest set of tokens with this much probability
    top_k: int = 0  # sample among the k likeliest tokens; 0: no limit
    stop: tuple[str, ...] = ()  # the text ends before the first of these strings
    seed: int | None = None  # sampling seed: same seed, same prompt, same tokens

    def __post_init__(self) -> None:
        def bad(what: str, value: object, expected: str) -> InputError:
            return InputError(f"{what} {value!r} is invalid; expected {expected}")

        mt = self.max_tokens
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise bad("max_tokens", mt, "an integer >= 1")
        t = self.temperature
        if (
            not isinstance(t, (int, float))
            or isinstance(t, bool)
            or not math.isfinite(t)
            or not 0 <= t <= 100
        ):
            raise bad("temperature", t, "a number from 0 (greedy) to 100")
        p = self.top_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
            raise bad("top_p", p, "a number in (0, 1]")
        k = self.top_k
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise bad("top_k", k, "an integer >= 0 (0: no limit)")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            shown = list(self.stop) if isinstance(self.stop, tuple) else self.stop
            raise bad("stop", shown, "a list of non-empty strings")
        if len(self.stop) > _MAX_STOPS:
            raise bad("stop", f"({len(self.stop)} strings)", f"at most {_MAX_STOPS} strings")
        s = self.seed
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 0):
            raise bad("seed", s, "an integer >= 0 or None")
        if s is not None and s > _MAX_SEED:  # onnxruntime-genai takes a 32-bit seed
            raise bad("seed", s, f"an integer from 0 to {_MAX_SEED} or None")

    @classmethod
    def of(
        cls,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> GenerateOptions:
        """Options from keyword arguments as callers write them (one stop string or many)."""
        stops: tuple[Any, ...] = (
            () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        )
        return cls(max_tokens, temperature, top_p, top_k, stops, seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One finished generation.

    ``token_ids`` are the tokens the model generated (the end-of-sequence token included
    when it ended the text); ``text`` is their text, cut before a stop string.
    ``ttft_s`` runs from the call to the first generated token (tokenizing and the
    prompt's forward pass included); ``tokens_per_s`` is the decode rate after it.
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    ttft_s: float  # seconds
    tokens_per_s: float  # tokens per second after the first; 0.0 with fewer than 2 tokens
    stop_reason: str  # one of STOP_REASONS
    total_s: float  # seconds, the whole call

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "prompt_tokens": self.prompt_tokens,
            "ttft_s": self.ttft_s,
            "tokens_per_s": self.tokens_per_s,
            "stop_reason": self.stop_reason,
            "total_s": self.total_s,
        }


def check_messages(messages: Any) -> list[dict[str, str]]:
    """A chat as a list of ``{"role", "content"}`` objects, checked; a copy to serialize."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} objects, "
            f"got {type(messages).__name__}"
            + (" (empty)" if isinstance(messages, (list, tuple)) else "")
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content"}:
            raise InputError(
                f"messages[{i}] must be an object with 'role' and 'content' only, got {m!r:.80}"
            )
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError(f"messages[{i}]: role {role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise InputError(
                f"messages[{i}]: content must be a string, got {type(content).__name__}"
            )
        out.append({"role": role, "content": content})
    return out
