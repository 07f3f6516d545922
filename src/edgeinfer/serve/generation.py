"""Generation in the server: each stream runs its own generator on its own worker thread.

A model of kind ``"generative"`` (what :func:`edgeinfer.load` opens as a
``GenerativeModel``) gets a :class:`GenerationBatcher` in place of the predictive
:class:`~edgeinfer.serve.batching.Batcher`. There are no tensors to coalesce: every
generation runs its own onnxruntime-genai generator (its own KV cache) over the one loaded
model, which onnxruntime-genai allows from several threads at once, on a thread of the
batcher's pool. Up to ``max_batch_size`` generations run at once (sequences in flight, as
language-model servers count a batch); more wait for a free slot, at most
``max_queue_size`` of them and each at most ``queue_timeout_s`` (then 503, as any model's
queue): the same admission control, metrics and ``Server-Timing`` as a predictive model.

The worker hands each decoded piece (its text and the token ids behind it) to the event
loop through a queue (:class:`GenerationJob`), running at most :data:`AHEAD` pieces ahead
of the reader. The reader -- a route sending events to a client -- cancels the job when
its client is gone: the worker stops at the next token and its slot is free again.

Nothing here knows about HTTP: the routes are :mod:`edgeinfer.serve.generate_routes` (the
Open Inference Protocol's generate extension) and :mod:`edgeinfer.serve.openai_routes`.
The model is reached by duck typing (``stream``, ``context_length``), as the import
layers have it (ADR 0012): serve never imports ``edgeinfer.generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from edgeinfer.runtime.model import Model
from edgeinfer.serve.batching import Batcher
from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import BadRequest, ModelNotReady, QueueTimeout, error_status
from edgeinfer.serve.metrics import Metrics

__all__ = ["AHEAD", "GenerationBatcher", "GenerationJob", "Piece", "is_generative"]

log = logging.getLogger(__name__)

AHEAD = 16  # pieces a worker may decode ahead of its reader before it waits
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
    """One generation on a worker thread; :meth:`next` gives its pieces in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: Any, queue_s: float) -> None:
        self.stream = stream  # a TextStream: iterates text pieces, grows .token_ids
        self.prompt_tokens: int = int(stream.prompt_tokens)
        self.queue_s = queue_s  # seconds it waited for a slot
        self.result: Any = None  # the stream's Generation once the worker is done
        self._loop = loop
        self._pieces: asyncio.Queue[Piece] = asyncio.Queue()
        self._room = threading.Semaphore(AHEAD)
        self._cancelled = threading.Event()
        self.finished = asyncio.Event()  # set on the loop once the worker has let go
        self._started = time.perf_counter()
        self.first_s: float | None = None  # seconds from the start to the first piece
        self.total_s: float | None = None  # seconds from the start to the last piece

    async def next(self) -> Piece:
        """The next piece (waits for the worker); after the last one, do not call again."""
        piece = await self._pieces.get()
        self._room.release()
        elapsed = time.perf_counter() - self._started
        if self.first_s is None:
            self.first_s = elapsed
        if piece.last:
            self.total_s = elapsed
        return piece

    def cancel(self) -> None:
        """Stop generating (the reader is gone): the worker stops at its next token."""
        self._cancelled.set()
        self._room.release()  # wake a worker waiting for room

    def abandon(self) -> None:
        """The client closed its connection: stop generating, and end the reader's wait
        with a last piece saying so (status 499, as proxies log it)."""
        self.cancel()
        self._pieces.put_nowait(Piece("", (), error=CLIENT_GONE, error_status=499))

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

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

    # ------------------------------------------------------------ the worker's side
    def _put(self, piece: Piece) -> bool:
        """Hand ``piece`` to the reader (waiting while it is :data:`AHEAD` behind); False
        once the job is cancelled."""
        while not self._room.acquire(timeout=1.0):
            if self._cancelled.is_set():
                return False
        if self._cancelled.is_set():
            return False
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._pieces.put_nowait, piece)
        return True

    def _run(self) -> None:
        """On a worker thread: iterate the stream, handing pieces on, until it ends or the
        job is cancelled."""
        stream = self.stream
        seen = 0
        try:
            for text in stream:
                ids = tuple(stream.token_ids[seen:])
                seen += len(ids)
                if not self._put(Piece(text, ids)):
                    break
                if self._cancelled.is_set():
                    break
            else:
                self.result = result = stream.result
                rest = tuple(result.token_ids[seen:])
                self._put(Piece("", rest, finish_reason=result.stop_reason))
        except Exception as exc:  # a one-line error event for the reader, never a traceback
            status = error_status(exc)
            if status.status >= 500:
                log.warning("generation failed: %s", status.message)
            self._put(Piece("", (), error=status.message, error_status=status.status))
        finally:
            stream.close()  # a cancelled stream stops its generator here
            self.result = stream.result


class GenerationBatcher(Batcher):
    """Runs a generative model's generations: at most ``max_batch_size`` at once, each on
    its own thread; others wait (bounded, with a timeout) for a slot."""

    def __init__(self, model: Model, label: str, config: BatchConfig, metrics: Metrics) -> None:
        super().__init__(model, label, config, metrics)
        self.batching = False  # nothing to coalesce; max_batch_size counts generations
        self.slots = config.max_batch_size
        self._free = asyncio.Semaphore(self.slots)
        self._waiting = 0
        self._running: set[GenerationJob] = set()
        self._threads = ThreadPoolExecutor(self.slots, thread_name_prefix=f"generate-{label}")
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
        """Wait for a slot (within the queue timeout), then run ``stream`` on a worker.

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
        loop = asyncio.get_running_loop()
        job = GenerationJob(loop, stream, queue_s)
        self._running.add(job)
        self._busy += 1
        future = loop.run_in_executor(self._threads, job._run)
        future.add_done_callback(lambda f: self._finished(job, f))
        return job

    def _finished(self, job: GenerationJob, future: asyncio.Future[None]) -> None:
        """On the loop, once a worker let go of its job: free the slot, count it."""
        self._running.discard(job)
        self._busy -= 1
        self._free.release()
        job.finished.set()
        result = job.result
        if result is None:
            self._ended["error"].inc()
            return
        n = len(result.token_ids)
        self._tokens.inc(n)
        if n:
            self._ttft.observe(result.ttft_s)
        self._compute_s.observe(result.total_s)
        reason = "cancelled" if job.cancelled else result.stop_reason
        failed = future.exception() is not None or reason not in self._ended
        self._ended["error" if failed else reason].inc()

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
        self._threads.shutdown(wait=False)
        await super().close(timeout_s)
