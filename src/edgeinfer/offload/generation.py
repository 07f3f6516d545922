"""``GenerativeOffloader``: per request, generate text on the device or on an edge server,
and finish every generation the network breaks off on the device.

::

    off = GenerativeOffloader("bundles/smollm2", "http://edge:8000")
    for piece in off.stream("The capital of France is", max_tokens=32):
        print(piece, end="")
    off.generate("Hello", max_tokens=8).where      # "remote", "local", "remote -> local at 5"
    off.generate(diary, private=True)             # the prompt never leaves the device

Deciding is the :class:`~edgeinfer.offload.Offloader`'s machinery: each side's expected
time is its time to first token (per prompt token) plus ``max_tokens - 1`` times its time
per token, learned from the generations each side ran (:class:`GenerationEstimates`), the
server's RTT from the pool's ready probes (:mod:`.pool`), and a placement policy
(:mod:`.policy`) picks among the options with privacy and battery as for any request.

Falling back mid-stream (ADR 0017): the prompt is tokenized here and sent as token ids, so
device and server count tokens alike. When the stream breaks (a reset connection, an
``error`` event, a stream that ends early, or no token for ``gap_s``), the device continues
from the prompt plus the tokens already received (:meth:`GenerativeModel.resume`), and the
caller's stream goes on where it was; the result marks the token index where it switched.
With greedy decoding and the same bundle on both sides the text is the device's own
generation, token for token.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from edgeinfer.errors import EdgeInferError, InputError
from edgeinfer.generate.options import GenerateOptions
from edgeinfer.offload.breaker import CircuitBreaker
from edgeinfer.offload.energy import Battery, DeviceProfile
from edgeinfer.offload.errors import OffloadError, RemoteError
from edgeinfer.offload.generation_values import (
    GenerationEstimates,
    GenerationPart,
    GenerationStats,
    GenerationStream,
    GenerativeOffloaderConfig,
    OffloadedGeneration,
    Side,
)
from edgeinfer.offload.policy import LOCAL, Decision, Option, Policy, Situation, decide, get_policy
from edgeinfer.offload.pool import RemotePool
from edgeinfer.offload.remote import RemoteModel
from edgeinfer.offload.remote_generate import RemoteGenerator

__all__ = [
    "GenerationEstimates",
    "GenerationPart",
    "GenerationStats",
    "GenerationStream",
    "GenerativeOffloader",
    "GenerativeOffloaderConfig",
    "OffloadedGeneration",
]

Prompt = str | Sequence[Mapping[str, str]]  # a text, or a chat of {"role", "content"}
_UP_BYTES_PER_TOKEN = 8  # bytes: a prompt token as JSON ("12345, ")
_DOWN_BYTES_PER_TOKEN = 120  # bytes: one server-sent event per token


class _Feeder:
    """Feeds a :class:`~edgeinfer.generate.model.Follower` the tokens of a server's
    stream on a thread of its own, so reading the stream never waits on the model."""

    def __init__(self, follower: Any) -> None:
        self.follower = follower
        self._queue: queue.SimpleQueue[tuple[int, ...] | None] = queue.SimpleQueue()
        self._failed = False
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="generate-follow", daemon=True)
        self._thread.start()

    def put(self, token_ids: tuple[int, ...]) -> None:
        self._queue.put(token_ids)

    def _run(self) -> None:
        while (ids := self._queue.get()) is not None:
            try:
                for token in ids:
                    if self._cancelled:
                        return
                    self.follower.feed(token)
            except EdgeInferError:  # resume replays what was not fed; the stream goes on
                self._failed = True
                return

    def stop(self, *, wait: bool) -> Any:
        """With ``wait``, let what was queued be fed and return the follower (``None`` if
        feeding failed); else drop the rest (the server finished: nothing to go on with)."""
        self._cancelled = not wait
        self._queue.put(None)
        if not wait:
            return None
        self._thread.join()
        if self._failed:
            self.follower.close()
            return None
        return self.follower


class GenerativeOffloader:
    """Decides per request where a language model generates: on the device or on a server.

    ``local``: a :class:`~edgeinfer.generate.GenerativeModel` or the path of a generative
    bundle (required: the device finishes what the server cannot). ``remote``: server
    URLs (``http://``), serving the same model as ``model`` (default: the local model's
    name). ``policy``, ``device`` and ``battery`` are the :class:`Offloader`'s.
    """

    def __init__(
        self,
        local: Any,
        remote: Sequence[str] | str = (),
        policy: str | Policy = "latency",
        *,
        model: str | None = None,
        version: str | int | None = None,
        token: str | None = None,
        device: DeviceProfile | None = None,
        battery: Battery | Callable[[], float | None] | None = None,
        config: GenerativeOffloaderConfig | None = None,
    ) -> None:
        self._owns_local = isinstance(local, (str, os.PathLike))
        if self._owns_local:
            from edgeinfer.runtime import load

            local = load(local)  # a generative bundle opens as a GenerativeModel
        if local is None or not callable(getattr(local, "resume", None)):
            raise InputError(
                "a GenerativeOffloader needs a local generative model (or its bundle's path): "
                f"the device finishes what the server cannot; got {type(local).__name__}"
            )
        self.local = local
        urls = [remote] if isinstance(remote, str) else list(remote)
        name = model or str(local.name)
        self.config = cfg = config or GenerativeOffloaderConfig()
        self.policy = get_policy(policy)
        self.device = device or DeviceProfile()
        self.battery = battery if isinstance(battery, Battery) else Battery(battery)
        self._lock = threading.Lock()  # guards estimates and stats
        self.stats = GenerationStats()
        self.remotes = tuple(RemoteGenerator(u, name, version, token=token) for u in urls)
        self.pool = RemotePool(
            [RemoteModel(u, name, version, token=token) for u in urls],
            breaker=cfg.breaker,
            probe_timeout_s=cfg.probe_timeout_s,
            window=cfg.window,
            alpha=cfg.alpha,
            lock=self._lock,
        )
        self.local_est = GenerationEstimates(cfg.window, cfg.alpha)
        self.remote_est = tuple(GenerationEstimates(cfg.window, cfg.alpha) for _ in urls)
        self._closed = False

    def __repr__(self) -> str:
        return f"GenerativeOffloader(local={self.local!r}, remote={[r.url for r in self.remotes]})"

    def __enter__(self) -> GenerativeOffloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ deciding
    def _situation(self, prompt_tokens: int, max_tokens: int, private: bool) -> Situation:
        now = time.perf_counter()
        explore = self.config.explore_after_s

        def stale(est: GenerationEstimates) -> bool:
            return explore is not None and now - est.updated > explore

        lat = None if stale(self.local_est) else self.local_est.predict(prompt_tokens, max_tokens)
        energy = None if lat is None else self.device.local_joules(lat)
        age = now - self.local_est.updated
        options = [Option(LOCAL, lat, energy, 1.0, False, "local", age)]
        for slot, est in zip(self.pool.slots, self.remote_est, strict=True):
            if private:
                break  # nothing of a private request goes out, not even a probe
            if not slot.breaker.closed:
                self.pool.maybe_probe(slot)  # its half-open trial, when due
                continue
            rtt = slot.est.rtt
            if rtt.value is None or now - rtt.updated > self.config.probe_after_s:
                self.pool.maybe_probe(slot)
            lat = None if stale(est) else est.predict(prompt_tokens, max_tokens)
            energy = None
            if lat is not None:
                lat += rtt.value or 0.0
                up = _UP_BYTES_PER_TOKEN * prompt_tokens + 300
                energy = self.device.remote_joules(lat, up, _DOWN_BYTES_PER_TOKEN * max_tokens)
            age = now - est.updated
            options.append(
                Option(slot.placement, lat, energy, slot.est.success, True, slot.label, age)
            )
        return Situation(tuple(options), None, private, self.battery.level(), None)

    def decide(self, prompt: Prompt, max_tokens: int = 128, private: bool = False) -> Decision:
        """Where ``generate`` would run this prompt now, without running anything."""
        ids = self.local.prompt_ids(prompt)
        return decide(self.policy, self._situation(len(ids), max_tokens, private))

    # ------------------------------------------------------------ generating
    def generate(
        self,
        prompt: Prompt,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        *,
        private: bool = False,
    ) -> OffloadedGeneration:
        """Continue ``prompt`` where the policy says; finish on the device if the server
        cannot. Parameters are :meth:`GenerativeModel.generate`'s; ``private=True``: the
        prompt never leaves the device."""
        s = self.stream(prompt, max_tokens, temperature, top_p, top_k, stop, seed, private=private)
        with s:
            for _ in s:
                pass
        assert s.result is not None  # a stream run to its end always has a result
        return s.result

    def stream(
        self,
        prompt: Prompt,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        *,
        private: bool = False,
    ) -> GenerationStream:
        """Like :meth:`generate`, but text pieces as they come (the prompt and parameters
        are checked, and the placement decided, before the first piece)."""
        if self._closed:
            raise OffloadError("this GenerativeOffloader is closed")
        start = time.perf_counter()
        opts = GenerateOptions.of(max_tokens, temperature, top_p, top_k, stop, seed)
        ids = self.local.prompt_ids(prompt)
        decision = decide(self.policy, self._situation(len(ids), opts.max_tokens, private))
        with self._lock:
            self.stats.requests += 1
        stream = GenerationStream()
        stream._it = self._run(stream, ids, opts, decision, start)  # it reports to the stream
        return stream

    def _run(
        self,
        out: GenerationStream,
        ids: list[int],
        opts: GenerateOptions,
        decision: Decision,
        start: float,
    ) -> Generator[str, None, None]:
        where = decision.placement
        side: Side = "remote" if where.kind == "remote" else "local"
        tokens: list[int] = []
        shown: list[str] = []
        url: str | None = None
        switched: int | None = None
        why: str | None = None
        stop_reason = "cancelled"
        first: float | None = None
        follower = None  # with config.follow: the device's model, fed the server's tokens
        with self._lock:
            setattr(self.stats, side, getattr(self.stats, side) + 1)
        try:
            if where.kind == "remote" and where.remote is not None:
                i = where.remote
                remote, slot, cfg = self.remotes[i], self.pool.slots[i], self.config
                url, last = remote.url, start
                feeder = _Feeder(self.local.follow(ids, opts)) if cfg.follow else None
                events = remote.stream(ids, opts, first_s=cfg.first_token_s, gap_s=cfg.gap_s)
                try:
                    for event in events:
                        if event.token_ids:
                            first = event.at if first is None else first
                            last = event.at
                            tokens.extend(event.token_ids)
                            if feeder is not None:
                                feeder.put(event.token_ids)
                        if event.text:
                            shown.append(event.text)
                            yield event.text
                        if event.finish_reason is not None:
                            stop_reason = event.finish_reason
                except RemoteError as exc:
                    self.pool.failed(slot, exc)
                    switched, why = len(tokens), str(exc)
                    with self._lock:
                        self.stats.fallbacks += 1
                else:
                    slot.breaker.record_success()
                    if first is not None:
                        rtt = slot.est.rtt.value or 0.0
                        with self._lock:
                            self.remote_est[i].observe(
                                len(ids), first - start - rtt, len(tokens), last - first, last
                            )
                finally:
                    events.close()
                    if feeder is not None:
                        follower = feeder.stop(wait=switched is not None)
            if side == "local" or switched is not None:
                local_start = time.perf_counter()
                text = "".join(shown)
                if side == "remote" and follower is not None:
                    pieces = follower.resume(tokens, shown=text)  # fed already: no replay
                else:
                    exact = self.config.exact_resume
                    pieces = self.local.resume(ids, tokens, opts, shown=text, exact=exact)
                with pieces:
                    yield from pieces
                result = pieces.result
                stop_reason = result.stop_reason
                if len(result.token_ids) > len(tokens) and first is None:
                    first = local_start + result.ttft_s
                if switched is None and result.token_ids:
                    n = len(result.token_ids)
                    decode = (n - 1) / result.tokens_per_s if result.tokens_per_s else 0.0
                    with self._lock:
                        self.local_est.observe(
                            len(ids), result.ttft_s, n, decode, time.perf_counter()
                        )
                tokens, shown = list(result.token_ids), [result.text]
        finally:
            parts = []
            ended = 0  # where the server's part ended
            if side == "remote":
                ended = len(tokens) if switched is None else switched
                if ended:
                    parts.append(GenerationPart("remote", 0, ended, url))
            if len(tokens) > ended:
                parts.append(GenerationPart("local", ended, len(tokens)))
            out.result = OffloadedGeneration(
                text="".join(shown),
                token_ids=tuple(tokens),
                prompt_tokens=len(ids),
                placement=side,
                parts=tuple(parts),
                switched_at=switched,
                reason=decision.reason,
                fallback_reason=why,
                stop_reason=stop_reason,
                ttft_s=0.0 if first is None else first - start,
                total_s=time.perf_counter() - start,
            )

    # ------------------------------------------------------------ the rest
    def breaker(self, index: int = 0) -> CircuitBreaker:
        """The circuit breaker of server ``index``."""
        return self.pool.slots[index].breaker

    def probe(self) -> list[float | None]:
        """Probe every server now (blocking); round trips in seconds, ``None`` if failed."""
        return [self.pool.probe(slot) for slot in self.pool.slots]

    def close(self) -> None:
        """Stop background probes and close the connections (and a model it loaded)."""
        self._closed = True
        self.pool.close()
        for slot in self.pool.slots:
            slot.remote.close()
        for r in self.remotes:
            r.close()
        if self._owns_local:
            self.local.close()
