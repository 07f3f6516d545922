"""Dynamic batching and backpressure for one loaded model version.

Requests wait in a bounded queue. ``instances`` workers (asyncio tasks) each take the oldest
request and every queued request compatible with it (same trailing shapes, dtypes and
requested outputs) up to ``max_batch_size`` rows, optionally waiting ``max_queue_delay_us``
for more; they concatenate along the first axis, run the model on a thread of the model's
own pool and split the outputs back by rows.

A model that runs a batch in microseconds (a small MLP, a tree ensemble) pays more for the
hand-off to its thread and back -- two thread switches, the GIL changing hands twice, a
wake-up of the event loop -- than for the run itself. Such a batch runs on the event loop
instead, when all of these hold: ``inline_compute_us`` is not 0; the model's inputs have
fixed shapes besides the batch dimension (so a run's cost is bounded by ``max_batch_size``
rows and cannot grow with what a client sends); and the model's recent runs (a moving
average, over runs on the loop and on the thread alike) took less than ``inline_compute_us``.
A model's first runs, and every run of a model that is slower than that, stay on its thread.
Such a model's request that finds nothing queued and nothing running (and no
``max_queue_delay_us`` to wait for company) runs at once in its own task, without the queue
and the worker's turn of the loop: it would have been a batch of one anyway. One such request
per turn of the event loop: the requests that arrive in the same turn queue and batch, as
under load many do.

Backpressure: a request that finds the queue full, or that could not start within its queue
timeout at the rate the queue drains now, is refused at once (:class:`QueueFull`, see
:mod:`.admission`, with a suggested back-off); one that waits longer than its queue timeout
all the same is taken out of the queue and refused (:class:`QueueTimeout`). A request that
has started running is never abandoned. Memory is bounded by ``max_queue_size`` requests plus
the batches in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from edgeinfer.runtime.model import Model
from edgeinfer.serve.admission import Admission
from edgeinfer.serve.config import BatchConfig
from edgeinfer.serve.errors import ModelNotReady, QueueTimeout
from edgeinfer.serve.metrics import Metrics

__all__ = ["Batcher", "Timing", "batchable"]

log = logging.getLogger(__name__)


class Timing(NamedTuple):
    queue_s: float  # seconds waiting in the queue
    compute_s: float  # seconds the model ran (for the whole batch)
    batch_rows: int  # rows in the batch this request ran in

    def header(self, decode_s: float = 0.0, encode_s: float = 0.0) -> str:
        """The ``Server-Timing`` value (milliseconds), as HTTP header or gRPC metadata;
        ``decode``/``encode``: time spent undoing and applying HTTP compression, if any."""
        value = f"queue;dur={self.queue_s * 1e3:.3f}, compute;dur={self.compute_s * 1e3:.3f}"
        if decode_s > 0:
            value += f", decode;dur={decode_s * 1e3:.3f}"
        if encode_s > 0:
            value += f", encode;dur={encode_s * 1e3:.3f}"
        return value


@dataclass(eq=False)
class _Item:
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None
    rows: int
    key: Hashable
    future: asyncio.Future[tuple[dict[str, np.ndarray], Timing]]
    enqueued: float = field(default_factory=time.perf_counter)
    timer: asyncio.TimerHandle | None = None


def _bounded_inputs(model: Model) -> bool:
    """Every input has a fixed shape besides its first dimension, and holds no strings."""
    return all(
        s.shape is not None and s.dtype != "bytes" and all(isinstance(d, int) for d in s.shape[1:])
        for s in model.inputs
    )


def batchable(model: Model) -> bool:
    """True when every input and output has a dynamic first dimension."""
    specs = (*model.inputs, *model.outputs)
    return all(
        s.shape is not None and len(s.shape) > 0 and not isinstance(s.shape[0], int) for s in specs
    )


class Batcher:
    """Queue, batch and run requests for one model."""

    def __init__(self, model: Model, label: str, config: BatchConfig, metrics: Metrics) -> None:
        self.model = model
        self.label = label  # model name for metrics
        self.config = config
        self.batching = config.max_batch_size > 1 and batchable(model)
        if self.batching and config.max_queue_size < config.max_batch_size * config.instances:
            log.warning(
                "model %s: max_queue_size %d cannot hold a full batch for each instance, so "
                "batches stay small under load; max_batch_size x instances x 2 = %d is a "
                "better bound (deadline-aware admission keeps the wait within the queue "
                "timeout either way)",
                label,
                config.max_queue_size,
                config.max_batch_size * config.instances * 2,
            )
        self._queue: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._pool = ThreadPoolExecutor(config.instances, thread_name_prefix=f"infer-{label}")
        self._closing = False
        self._busy = 0
        self._depth = metrics.queue_depth.labels(label)
        self._queue_s = metrics.queue_seconds.labels(label)
        self._compute_s = metrics.compute_seconds.labels(label)
        self._batch = metrics.batch_size.labels(label)
        self.admission = Admission(label, config)
        self._refused = {
            reason: metrics.rejections.labels(label, reason)
            for reason in ("queue_full", "deadline")
        }
        self._expired = metrics.rejections.labels(label, "queue_timeout")
        self._drain_rate = metrics.drain_rate.labels(label)
        # see the module docstring: runs on the event loop while recent runs are this short
        self._inline_s = config.inline_compute_us / 1e6 if _bounded_inputs(model) else 0.0
        self._recent_s = float("inf")  # moving average of a batch's compute seconds
        self._ran_now = False  # a request ran at once in this turn of the loop

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def admit(self, timeout_s: float | None = None) -> None:
        """Raise :class:`QueueFull` now if a new request would not be admitted to the queue.

        Refused: the queue is full, or the request could not start within its queue timeout
        (``timeout_s`` when it asks for less than the model's) at the current drain rate. The
        error carries ``retry_after_s``. Lets a transport refuse an overload before it reads
        and decodes the request; :meth:`infer` checks again.
        """
        ahead = len(self._queue)
        reason = self.admission.check(ahead, timeout_s)
        if reason is not None:
            self._refused[reason].inc()
            raise self.admission.refusal(reason, ahead, timeout_s)

    def _start(self) -> None:
        self._arrived = asyncio.Event()
        self._workers = [
            asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.label}")
            for _ in range(self.config.instances)
        ]

    async def infer(
        self,
        feeds: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Queue validated ``feeds`` and wait for the model's outputs.

        Raises :class:`QueueFull` at once when the request is not admitted (see :meth:`admit`)
        and :class:`QueueTimeout` when it waited ``timeout_s`` (capped by the configured queue
        timeout).
        """
        if self._closing:
            raise ModelNotReady(f"model {self.label!r} is being unloaded; retry shortly")
        if not self._workers:
            self._start()
        timeout = self.config.queue_timeout_s
        if timeout_s is not None:  # a request may ask to wait less, never more
            timeout = min(timeout, timeout_s)
        self.admit(timeout)
        out_key = None if outputs is None else tuple(outputs)
        loop = asyncio.get_running_loop()
        if (
            not self._queue
            and not self._busy
            and not self._ran_now
            and self._recent_s < self._inline_s
            and not self.config.max_queue_delay_us
        ):
            # one per turn of the loop: requests that arrive with it queue up and batch
            self._ran_now = True
            loop.call_soon(self._next_turn)
            return self._run_now(feeds, out_key)
        rows, key = 1, None
        if self.batching:
            first = next(iter(feeds.values()))
            rows = int(first.shape[0]) if first.ndim else 1
            key = (tuple((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()), out_key)
        item = _Item(feeds, out_key, rows, key, loop.create_future())
        item.timer = loop.call_later(timeout, self._expire, item, timeout)
        self._queue.append(item)
        self._depth.set(len(self._queue))
        assert self._arrived is not None
        self._arrived.set()
        return await item.future

    def _expire(self, item: _Item, timeout: float) -> None:
        try:
            self._queue.remove(item)
        except ValueError:
            return  # already taken by a worker: it runs to the end
        self._depth.set(len(self._queue))
        self._expired.inc()
        if not item.future.done():
            item.future.set_exception(
                QueueTimeout(
                    f"model {self.label!r}: the request waited {timeout * 1000:.0f} ms in the "
                    "queue without being run (queue timeout); the server is overloaded",
                    retry_after_s=self.admission.retry_after_s(len(self._queue)),
                )
            )

    def _take(self) -> list[_Item]:
        """The oldest request and the queued requests that can join its batch."""
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        if self.batching and rows < self.config.max_batch_size:
            rows = self._gather(batch, rows)
        return batch

    def _gather(self, batch: list[_Item], rows: int) -> int:
        key, limit = batch[0].key, self.config.max_batch_size
        kept: deque[_Item] = deque()
        while self._queue and rows < limit:
            item = self._queue.popleft()
            if item.key == key and rows + item.rows <= limit:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        kept.extend(self._queue)
        self._queue = kept
        return rows

    async def _work(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        delay = self.config.max_queue_delay_us / 1e6
        taken_at: float | None = None  # when this worker took its last batch, while busy
        served = 0  # requests in that batch
        while True:
            if not self._queue:
                if self._closing:
                    return
                taken_at = None  # idle: the next interval says nothing about the drain rate
                self._arrived.clear()
                await self._arrived.wait()
                continue
            now = time.perf_counter()
            if taken_at is not None:  # requests waited all along: this is how fast they drain
                self.admission.observe(now - taken_at, served)
                self._drain_rate.set(self.admission.rate or 0.0)
            batch = self._take()
            rows = sum(i.rows for i in batch)
            if delay > 0 and self.batching and rows < self.config.max_batch_size:
                deadline = batch[0].enqueued + delay
                while rows < self.config.max_batch_size:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._arrived.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    if self._queue:
                        rows = self._gather(batch, rows)
            self._depth.set(len(self._queue))
            taken_at, served = now, len(batch)
            for item in batch:
                if item.timer is not None:
                    item.timer.cancel()
            started = time.perf_counter()
            self._busy += 1
            try:
                if self._recent_s < self._inline_s:
                    results, ran = self._timed_run(batch)  # cheaper than a thread's hand-off
                else:
                    results, ran = await loop.run_in_executor(self._pool, self._timed_run, batch)
            except BaseException as exc:  # the model failed: every request in the batch hears
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                    raise
                continue
            finally:
                self._busy -= 1
            compute = time.perf_counter() - started
            recent = self._recent_s
            self._recent_s = ran if recent == float("inf") else 0.5 * (recent + ran)
            self._compute_s.observe(compute)
            self._batch.observe(rows)
            for item, outs in zip(batch, results, strict=True):
                queued = started - item.enqueued
                self._queue_s.observe(queued)
                if not item.future.done():
                    item.future.set_result((outs, Timing(queued, compute, rows)))

    def _next_turn(self) -> None:
        self._ran_now = False

    def _run_now(
        self, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Run one request at once, on the loop, in the caller's task: nothing waits or runs,
        so it would be a batch of its own anyway, and the model is fast (see the module
        docstring); skips the queue and the worker's turn of the loop."""
        first = next(iter(feeds.values()), None)
        rows = int(first.shape[0]) if self.batching and first is not None and first.ndim else 1
        self._busy += 1
        started = time.perf_counter()
        try:
            result = self.model.predict(feeds, outputs)
        finally:
            self._busy -= 1
        ran = time.perf_counter() - started
        self._recent_s = 0.5 * (self._recent_s + ran)
        self._queue_s.observe(0.0)
        self._compute_s.observe(ran)
        self._batch.observe(rows)
        return result, Timing(0.0, ran, rows)

    def _timed_run(self, batch: list[_Item]) -> tuple[list[dict[str, np.ndarray]], float]:
        """:meth:`_run`, and the seconds it took (without any hand-off to a thread)."""
        start = time.perf_counter()
        results = self._run(batch)
        return results, time.perf_counter() - start

    def _run(self, batch: list[_Item]) -> list[dict[str, np.ndarray]]:
        """On a pool thread: run the batch; split outputs back per request."""
        outputs = batch[0].outputs
        if len(batch) == 1:
            return [self.model.predict(batch[0].feeds, outputs)]
        names = list(batch[0].feeds)
        feeds = {n: np.concatenate([i.feeds[n] for i in batch]) for n in names}
        result = self.model.predict(feeds, outputs)
        total = sum(i.rows for i in batch)
        if any(a.ndim == 0 or a.shape[0] != total for a in result.values()):
            # the model's outputs do not follow its inputs' rows: run one by one instead
            return [self.model.predict(i.feeds, outputs) for i in batch]
        bounds = np.cumsum([i.rows for i in batch])[:-1]
        split = {n: np.split(a, bounds) for n, a in result.items()}
        return [{n: parts[k] for n, parts in split.items()} for k in range(len(batch))]

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking requests, let queued and running ones finish, free the threads."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout_s)
            for task in pending:
                task.cancel()
        for item in list(self._queue):
            if not item.future.done():
                item.future.set_exception(ModelNotReady(f"model {self.label!r} was unloaded"))
        self._queue.clear()
        self._pool.shutdown(wait=True)
