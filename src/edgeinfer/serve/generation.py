"""Generation in the server: every stream its own generator, advanced a token at a time in turn.

A model of kind ``"generative"`` (what :func:`edgeinfer.load` opens as a
``GenerativeModel``) gets a :class:`GenerationBatcher` in place of the predictive
:class:`~edgeinfer.serve.batching.Batcher`. There are no tensors to coalesce: every
generation runs its own onnxruntime-genai generator (its own KV cache) over the one loaded
model. Up to ``max_batch_size`` generations run at once (sequences in flight, as
language-model servers count a batch); more wait for a free slot, at most
``max_queue_size`` of them and each at most ``queue_timeout_s`` (then 503, as any model's
queue): the same admission control, metrics and ``Server-Timing`` as a predictive model.
A :class:`Stepper` thread (``instances`` of them per model) takes its generations in turn,
a piece each (see there why not a thread each).

The stepper hands each decoded piece (its text and the token ids behind it) to the event
loop through a queue (:class:`GenerationJob`), at most :data:`AHEAD` pieces ahead of the
reader. The reader -- a route sending events to a client -- cancels the job when its
client is gone: the stepper closes the stream at its next turn and the slot is free again.

Nothing here knows about HTTP: the routes are :mod:`edgeinfer.serve.generate_routes` (the
Open Inference Protocol's generate extension) and :mod:`edgeinfer.serve.openai_routes`.
The model is reached by duck typing (``stream``, ``context_length``), as the import
layers have it (ADR 0012): serve never imports ``edgeinfer.generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeinfer.runtime.model import Model
from edgeinfer.serve.batching import Batcher
from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import BadRequest, ModelNotReady, QueueTimeout, error_status
from edgeinfer.serve.metrics import Metrics

__all__ = ["AHEAD", "GenerationBatcher", "GenerationJob", "Piece", "is_generative"]

log = logging.getLogger(__name__)

AHEAD = 16  # pieces a stream may be decoded ahead of its reader; then it waits its turn
CLIENT_GONE = "the client closed the connection"


def is_generative(model: Model) -> bool:
    """Whether ``model`` is a bundle of kind ``"generative"`` (a language model)."""
    bundle = getattr(model, "bundle", None)
    return bundle is not None and bundle.manifest.kind == "generative"


@dataclass(frozen=True)
class Piece:
    """One step of a generation: decoded text and the token ids behind it.

    The last piece has ``finish_reason`` (``eos``, ``stop``, ``max_tokens``, ``context``)
    and may carry the ids of tokens that gave no text (the end-of-sequence token, a stop
    string's); or it has ``error`` (one line) when the generation failed.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    error: str | None = None
    error_status: int = 500

    @property
    def last(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class GenerationJob:
    """One generation, advanced by a :class:`Stepper`; :meth:`next` gives its pieces."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stream: Any, queue_s: float, stepper: Stepper
    ) -> None:
        self.stream = stream  # a TextStream: iterates text pieces, grows .token_ids
        self.prompt_tokens: int = int(stream.prompt_tokens)
        self.queue_s = queue_s  # seconds it waited for a slot
        self.result: Any = None  # the stream's Generation once it ended
        self._loop = loop
        self._stepper = stepper
        self._pieces: asyncio.Queue[Piece] = asyncio.Queue()
        self._room = threading.Semaphore(AHEAD)
        self._cancelled = False
        self.failed = False  # the generation raised
        self._seen = 0  # token ids handed on so far
        self.finished = asyncio.Event()  # set on the loop once the stepper let go of it
        self._started = time.perf_counter()
        self.first_s: float | None = None  # seconds from the start to the first piece
        self.total_s: float | None = None  # seconds from the start to the last piece

    async def next(self) -> Piece:
        """The next piece (waits for it); after the last one, do not call again."""
        piece = await self._pieces.get()
        self._room.release()
        self._stepper.wake()
        elapsed = time.perf_counter() - self._started
        if self.first_s is None:
            self.first_s = elapsed
        if piece.last:
            self.total_s = elapsed
        return piece

    def cancel(self) -> None:
        """Stop generating (the reader is gone): the stepper closes the stream next."""
        self._cancelled = True
        self._stepper.wake()

    def abandon(self) -> None:
        """The client closed its connection: stop generating, and end the reader's wait
        with a last piece saying so (status 499, as proxies log it)."""
        self.cancel()
        self._pieces.put_nowait(Piece("", (), error=CLIENT_GONE, error_status=499))

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def server_timing(self) -> str:
        """The ``Server-Timing`` value (milliseconds): the wait for a slot (``queue``), the
        first piece (``ttft``: the prompt's forward pass and the first token) and, once the
        generation ended, the whole of it (``compute``)."""
        value = f"queue;dur={self.queue_s * 1e3:.3f}"
        if self.first_s is not None:
            value += f", ttft;dur={self.first_s * 1e3:.3f}"
        if self.total_s is not None:
            value += f", compute;dur={self.total_s * 1e3:.3f}"
        return value

    # ------------------------------------------------------------ the stepper's side
    def _post(self, piece: Piece) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._pieces.put_nowait, piece)

    def _step(self) -> bool | None:
        """On the stepper's thread: the next piece, handed to the reader. ``True``: a
        piece; ``False``: the reader is :data:`AHEAD` pieces behind, nothing done;
        ``None``: the generation is over (ended, failed or cancelled; stream closed)."""
        stream = self.stream
        if self._cancelled:
            stream.close()  # stops its generator, frees its KV cache
            self.result = stream.result
            return None
        if not self._room.acquire(blocking=False):
            return False
        try:
            text = next(stream)
        except StopIteration:
            self.result = result = stream.result
            rest = tuple(result.token_ids[self._seen :])
            self._post(Piece("", rest, finish_reason=result.stop_reason))
            return None
        except Exception as exc:  # a one-line error event for the reader, never a traceback
            self.failed = True
            stream.close()
            self.result = stream.result
            status = error_status(exc)
            if status.status >= 500:
                log.warning("generation failed: %s", status.message)
            message = status.message.splitlines()[0] if status.message else "generation failed"
            self._post(Piece("", (), error=message, error_status=status.status))
            return None
        ids = tuple(stream.token_ids[self._seen :])
        self._seen += len(ids)
        self._post(Piece(text, ids))
        return True


class Stepper:
    """One thread that advances its generations a piece (a token, mostly) at a time, in
    turn.

    onnxruntime-genai 0.18 holds the interpreter lock while it computes a token, so
    generator threads would not run in parallel anyway, and with several of them the event
    loop and each stream wait for whichever thread the OS hands the lock next (seconds at
    the 99th percentile with 8 streams of SmolLM2, ADR 0016). One thread taking the
    streams in turn gives each its token every round, and the event loop the lock between
    any two tokens. A stream whose reader is behind is skipped, not waited for.
    """

    def __init__(self, name: str, done: Callable[[GenerationJob], None]) -> None:
        self._done = done  # called on the stepper's thread when a job is over
        self._new: list[GenerationJob] = []
        self._wake = threading.Condition()
        self._woken = False
        self._closed = False
        self.jobs = 0  # jobs given and not yet over
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, job: GenerationJob) -> None:
        with self._wake:
            self._new.append(job)
            self.jobs += 1
            self._woken = True
            self._wake.notify()

    def wake(self) -> None:
        """Something changed (room for a piece, a cancellation): look again."""
        with self._wake:
            self._woken = True
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread once it has no jobs left."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        active: list[GenerationJob] = []
        while True:
            with self._wake:
                active.extend(self._new)
                self._new.clear()
                if not active:
                    if self._closed:
                        return
                    if not self._woken:
                        self._wake.wait()
                    self._woken = False
                    continue
                self._woken = False
            progressed = False
            for job in list(active):
                stepped = job._step()
                if stepped is None:
                    active.remove(job)
                    with self._wake:
                        self.jobs -= 1
                    self._done(job)
                progressed = progressed or stepped is not False
            if not progressed:  # every reader is behind: wait until one catches up
                with self._wake:
                    if not self._woken and not self._new:
                        self._wake.wait(0.5)


class GenerationBatcher(Batcher):
    """Runs a generative model's generations: at most ``max_batch_size`` at once, taken in
    turn by its steppers; others wait (bounded, with a timeout) for a slot."""

    def __init__(self, model: Model, label: str, config: BatchConfig, metrics: Metrics) -> None:
        # Nothing to coalesce: max_batch_size counts generations at once here, so the
        # predictive batcher underneath sees batches of one (and no advice on them).
        super().__init__(model, label, dataclasses.replace(config, max_batch_size=1), metrics)
        self.slots = config.max_batch_size
        self._free = asyncio.Semaphore(self.slots)
        self._waiting = 0
        self._running: set[GenerationJob] = set()
        self._steppers = [
            Stepper(f"generate-{label}-{i}", self._over) for i in range(config.instances)
        ]
        self._tokens = metrics.generated_tokens.labels(label)
        self._ttft = metrics.time_to_first_token.labels(label)
        self._ended = {
            reason: metrics.generations.labels(label, reason)
            for reason in ("eos", "stop", "max_tokens", "context", "cancelled", "error")
        }

    @property
    def context_length(self) -> int:
        return int(getattr(self.model, "context_length", 0))

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def properties(self) -> dict[str, str]:
        """What model metadata adds for a generative model."""
        return {"kind": "generative", "context_length": str(self.context_length)}

    def admit(self, timeout_s: float | None = None) -> None:
        """Raise :class:`QueueFull` now when ``max_queue_size`` generations wait already
        and every slot is taken."""
        ahead = self._waiting if self._running_count() >= self.slots else 0
        reason = self.admission.check(ahead, timeout_s)
        if reason is not None:
            self._refused[reason].inc()
            raise self.admission.refusal(reason, ahead, timeout_s)

    def _running_count(self) -> int:
        return len(self._running)

    def infer_refusal(self) -> BadRequest:
        """The answer to an inference request (``/infer``, gRPC ``ModelInfer``)."""
        return BadRequest(
            f"model {self.label!r} is a generative model: POST /v2/models/{self.label}/generate "
            "or /generate_stream (or /v1/completions) instead of /infer"
        )

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        raise self.infer_refusal()

    async def start(self, stream: Any, timeout_s: float | None = None) -> GenerationJob:
        """Wait for a slot (within the queue timeout), then hand ``stream`` to a stepper.

        ``stream``: a text stream as ``GenerativeModel.stream`` returns it (checked
        already); it is closed here if the generation cannot start.
        """
        try:
            if self._closing:
                raise ModelNotReady(f"model {self.label!r} is being unloaded; retry shortly")
            timeout = self.config.queue_timeout_s
            if timeout_s is not None:
                timeout = min(timeout, timeout_s)
            self.admit(timeout)
            queued = time.perf_counter()
            self._waiting += 1
            self._depth.set(self._waiting)
            try:
                await asyncio.wait_for(self._free.acquire(), timeout)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                self._expired.inc()
                raise QueueTimeout(
                    f"model {self.label!r}: the generation waited {timeout * 1e3:.0f} ms for "
                    f"one of its {self.slots} slots (queue timeout); the server is overloaded",
                    retry_after_s=self.admission.retry_after_s(self._waiting),
                ) from None
            finally:
                self._waiting -= 1
                self._depth.set(self._waiting)
        except BaseException:
            stream.close()
            raise
        queue_s = time.perf_counter() - queued
        self._queue_s.observe(queue_s)
        stepper = min(self._steppers, key=lambda s: s.jobs)
        job = GenerationJob(asyncio.get_running_loop(), stream, queue_s, stepper)
        self._running.add(job)
        self._busy += 1
        stepper.add(job)
        return job

    def _over(self, job: GenerationJob) -> None:
        """On a stepper's thread: ``job`` is over; the loop frees its slot."""
        with contextlib.suppress(RuntimeError):  # the loop closed with the server
            job._loop.call_soon_threadsafe(self._finished, job)

    def _finished(self, job: GenerationJob) -> None:
        """On the loop, once the stepper let go of a job: free the slot, count it."""
        self._running.discard(job)
        self._busy -= 1
        self._free.release()
        job.finished.set()
        result = job.result
        reason = "error" if result is None or job.failed else result.stop_reason
        self._ended[reason if reason in self._ended else "error"].inc()
        if result is None:
            return
        n = len(result.token_ids)
        self._tokens.inc(n)
        if n:
            self._ttft.observe(result.ttft_s)
        self._compute_s.observe(result.total_s)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new generations, let running ones finish (``timeout_s``), cancel the rest."""
        self._closing = True
        if self._running:
            waits = [asyncio.ensure_future(job.finished.wait()) for job in self._running]
            _, pending = await asyncio.wait(waits, timeout=timeout_s)
            for job in list(self._running):
                job.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout_s)
        for stepper in self._steppers:
            stepper.close()
        await super().close(timeout_s)
