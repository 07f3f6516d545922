"""Generation in the server: every stream its own generator, advanced a token at a time in turn.

A model of kind ``"generative"`` (what :func:`edgeinfer.load` opens as a
``GenerativeModel``) gets a :class:`GenerationBatcher` in place of the predictive
:class:`~edgeinfer.serve.batching.Batcher`. There are no tensors to coalesce: every
generation runs its own onnxruntime-genai generator (its own KV cache) over the one loaded
model. Up to ``max_batch_size`` generations run at once (sequences in flight, as
language-model servers count a batch); more wait for a free slot, at most
``max_queue_size`` of them and each at most ``queue_timeout_s`` (then 503, as any model's
queue): the same admission control, metrics and ``Server-Timing`` as a predictive model.
Generations are stepped in turn, a piece each (see :mod:`~edgeinfer.serve.stepper` why
not a thread each), by ``instances`` child processes per model
(:class:`~edgeinfer.serve.genproc.GenerationProcess`, the default: onnxruntime-genai
holds the interpreter lock while it computes a token, and in a child that lock is not the
server's) or, with ``BatchConfig.generation_process=False``, by as many
:class:`~edgeinfer.serve.stepper.Stepper` threads in the server's process.

Each decoded piece (its text and the token ids behind it) reaches the event loop through
a queue (:class:`GenerationJob`), at most :data:`~edgeinfer.serve.stepper.AHEAD` pieces
ahead of the reader. The reader -- a route sending events to a client -- cancels the job
when its client is gone: the stepper closes the stream at its next turn and the slot is
free again.

Nothing here knows about HTTP: the routes are :mod:`edgeinfer.serve.generate_routes` (the
Open Inference Protocol's generate extension) and :mod:`edgeinfer.serve.openai_routes`.
The model is reached by duck typing (``stream``, ``context_length``), as the import
layers have it (ADR 0012): serve never imports ``edgeinfer.generate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeinfer.runtime.model import Model
from edgeinfer.serve.batching import Batcher
from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import BadRequest, ModelNotReady, QueueTimeout
from edgeinfer.serve.genproc import GenerationProcess
from edgeinfer.serve.metrics import Metrics
from edgeinfer.serve.stepper import GenerationJob, Piece, Stepper

__all__ = ["GenerationBatcher", "GenerationJob", "Piece", "Prepared", "is_generative"]


@dataclass(frozen=True)
class Prepared:
    """A generation checked in the server's process, for a child process to run: the
    prompt's token ids and the parameters."""

    ids: list[int]
    params: dict[str, Any]


def is_generative(model: Model) -> bool:
    """Whether ``model`` is a bundle of kind ``"generative"`` (a language model)."""
    bundle = getattr(model, "bundle", None)
    return bundle is not None and bundle.manifest.kind == "generative"


class GenerationBatcher(Batcher):
    """Runs a generative model's generations: at most ``max_batch_size`` at once, taken in
    turn by its steppers; others wait (bounded, with a timeout) for a slot."""

    def __init__(
        self,
        model: Model,
        label: str,
        config: BatchConfig,
        metrics: Metrics,
        threads: int | None = None,
    ) -> None:
        # Nothing to coalesce: max_batch_size counts generations at once here, so the
        # predictive batcher underneath sees batches of one (and no advice on them).
        super().__init__(model, label, dataclasses.replace(config, max_batch_size=1), metrics)
        self.slots = config.max_batch_size
        self._free = asyncio.Semaphore(self.slots)
        self._waiting = 0
        self._running: set[GenerationJob] = set()
        self._steppers: list[Stepper] = []
        self.processes: list[GenerationProcess] = []
        if config.generation_process:
            path = Path(getattr(model, "path"))  # noqa: B009 - duck typing (ADR 0012)
            try:
                for _ in range(config.instances):
                    self.processes.append(GenerationProcess(label, path, threads, self._finished))
            except BaseException:
                for process in self.processes:
                    process.kill_now()
                raise
        else:
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

    def prepare(self, prompt: Any, params: Mapping[str, Any]) -> Any:
        """Check a generation's prompt and parameters (``InputError``: a 400), before any
        wait: what :meth:`start` takes. A text stream to step here, or the prompt's token
        ids and the parameters for a child process (the model's own checks run here all
        the same, on the server's copy of the model, which runs no generation)."""
        model: Any = self.model
        if not self.processes:
            return model.stream(prompt, **params)
        ids = model.prompt_ids(prompt)
        model.stream(ids, **params).close()  # the parameters' checks; nothing runs
        return Prepared(ids, dict(params))

    async def start(self, stream: Any, timeout_s: float | None = None) -> GenerationJob:
        """Wait for a slot (within the queue timeout), then hand ``stream`` to a stepper.

        ``stream``: what :meth:`prepare` returned (a text stream, closed here if the
        generation cannot start, or a :class:`Prepared` generation for a child process).
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
            if isinstance(stream, Prepared):
                up = [p for p in self.processes if p.unavailable is None] or self.processes
                process = min(up, key=lambda p: p.jobs)
                try:  # a child restarting after a death: its load time; or it cannot
                    await process.ready()
                except BaseException:
                    self._free.release()
                    raise
        except BaseException:
            if not isinstance(stream, Prepared):
                stream.close()
            raise
        queue_s = time.perf_counter() - queued
        self._queue_s.observe(queue_s)
        loop = asyncio.get_running_loop()
        if isinstance(stream, Prepared):
            job = GenerationJob(loop, len(stream.ids), queue_s, process)
            self._running.add(job)
            self._busy += 1
            process.submit(job, stream.ids, stream.params)
            return job
        stepper = min(self._steppers, key=lambda s: s.jobs)
        job = GenerationJob(loop, int(stream.prompt_tokens), queue_s, stepper, stream)
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
        await asyncio.gather(*(process.close() for process in self.processes))
        await super().close(timeout_s)
