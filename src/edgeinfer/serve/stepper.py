"""Stepping generations: a :class:`GenerationJob` is one generation as the event loop sees
it (its pieces, one at a time); something steps it and hands it each :class:`Piece` -- a
:class:`Stepper` thread in the server's process (this module), or a child process that
does the same over a pipe (:mod:`edgeinfer.serve.genproc`). :func:`advance` is the one
step both run. How many run, and who waits, is
:class:`edgeinfer.serve.generation.GenerationBatcher`'s business (ADR 0016).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edgeinfer.serve.errors import error_status

__all__ = ["AHEAD", "CLIENT_GONE", "Driver", "GenerationJob", "Piece", "Stepper", "advance"]

log = logging.getLogger(__name__)

AHEAD = 16  # pieces a stream may be decoded ahead of its reader; then it waits its turn
CLIENT_GONE = "the client closed the connection"
YIELD_AFTER_S = 0.005  # a step at least this long (a real model's token) is followed by ...
YIELD_S = 0.001  # ... this long without the GIL, for the event loop


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


def advance(stream: Any, seen: int) -> tuple[Piece, bool]:
    """One step of a text stream (a ``TextStream``: iterates text, grows ``.token_ids``)
    whose first ``seen`` token ids were handed on already: the piece, and whether the
    generation is over (ended or failed; a failed stream is closed here)."""
    try:
        text = next(stream)
    except StopIteration:
        result = stream.result
        return Piece("", tuple(result.token_ids[seen:]), finish_reason=result.stop_reason), True
    except Exception as exc:  # a one-line error event for the reader, never a traceback
        stream.close()
        status = error_status(exc)
        if status.status >= 500:
            log.warning("generation failed: %s", status.message)
        message = status.message.splitlines()[0] if status.message else "generation failed"
        return Piece("", (), error=message, error_status=status.status), True
    return Piece(text, tuple(stream.token_ids[seen:])), False


class Driver(Protocol):
    """What steps a :class:`GenerationJob`: told when its reader took a piece (room for
    one more) and when the job is cancelled."""

    def taken(self, job: GenerationJob) -> None: ...

    def cancel(self, job: GenerationJob) -> None: ...


class GenerationJob:
    """One generation, stepped by a :class:`Driver`; :meth:`next` gives its pieces.

    ``stream``: the text stream a :class:`Stepper` in this process steps; ``None`` when a
    child process runs the generation and only its pieces come here.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        prompt_tokens: int,
        queue_s: float,
        driver: Driver,
        stream: Any = None,
    ) -> None:
        self.stream = stream
        self.prompt_tokens = prompt_tokens
        self.queue_s = queue_s  # seconds it waited for a slot
        # the Generation once it ended (a child process's: what the counters read of it,
        # stop_reason, token_ids, ttft_s, total_s)
        self.result: Any = None
        self._loop = loop
        self._driver = driver
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
        self._driver.taken(self)
        elapsed = time.perf_counter() - self._started
        if self.first_s is None:
            self.first_s = elapsed
        if piece.last:
            self.total_s = elapsed
        return piece

    def cancel(self) -> None:
        """Stop generating (the reader is gone): the stepper closes the stream next."""
        if not self._cancelled:
            self._cancelled = True
            self._driver.cancel(self)

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
        piece, over = advance(stream, self._seen)
        self._seen += len(piece.token_ids)
        self._post(piece)
        if over:
            self.failed = piece.error is not None
            self.result = stream.result
            return None
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

    def taken(self, job: GenerationJob) -> None:
        job._room.release()
        self.wake()

    def cancel(self, job: GenerationJob) -> None:
        self.wake()

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
                began = time.perf_counter()
                stepped = job._step()
                if time.perf_counter() - began > YIELD_AFTER_S:
                    # The step held the GIL all along; leave the event loop a moment to run
                    # what waited meanwhile before the next step takes the GIL again.
                    time.sleep(YIELD_S)
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
