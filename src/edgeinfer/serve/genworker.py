"""The child process that runs a generative model's generations for the server.

:func:`main` ``FD BUNDLE THREADS`` -- started by
:class:`edgeinfer.serve.genproc.GenerationProcess`, never by hand. It loads the bundle,
says ``("ready", pid)`` (or ``("failed", message)``) on the connection at file descriptor
``FD``, and then steps its generations in turn, a piece each, as the server's
:class:`~edgeinfer.serve.stepper.Stepper` thread does, with the server's process out of
the way: onnxruntime-genai holds the interpreter lock while it computes a token, and here
that lock is this process's own (ADR 0016).

Messages (pickled tuples over a :class:`multiprocessing.connection.Connection`):

- from the server: ``("start", jid, prompt_ids, params)``, ``("room", {jid: n})`` (the
  reader took ``n`` pieces), ``("cancel", jid)``, ``("close",)``;
- to the server: ``("ready", pid)``, ``("failed", message)`` and ``("events", [...])``,
  each event ``(jid, piece)`` or ``(jid, Outcome)`` once the job is over.

The server going away (the connection's end of file, or a write that fails) ends this
process too: it never outlives its server.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from edgeinfer.serve.stepper import AHEAD, Piece, advance

__all__ = ["FLUSH_S", "WINDOW", "Outcome", "main"]

FLUSH_S = 0.002  # pieces go out together, at most this long after the first of them
# Pieces a stream may run ahead of its reader here: more than a thread's AHEAD, since the
# reader's credits come back over the pipe, a turn of each process's scheduling later
WINDOW = 4 * AHEAD


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, what the server's counters read of its ``Generation``."""

    stop_reason: str
    token_ids: tuple[int, ...]
    ttft_s: float
    total_s: float
    failed: bool


class _Job:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.room = WINDOW
        self.seen = 0
        self.cancelled = False


def _outcome(stream: Any, failed: bool) -> Outcome:
    r = stream.result
    if r is None:  # never started
        return Outcome("cancelled", (), 0.0, 0.0, failed)
    return Outcome(r.stop_reason, tuple(r.token_ids), r.ttft_s, r.total_s, failed)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _Worker:
    def __init__(self, conn: Connection, model: Any) -> None:
        self.conn = conn
        self.model = model
        self.jobs: dict[int, _Job] = {}  # in the order they came: the round's order
        self.events: list[tuple[int, Piece | Outcome]] = []
        self.flushed = time.perf_counter()
        self.closing = False

    # ------------------------------------------------------------ messages
    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "start":
            _, jid, ids, params = msg
            try:
                stream = self.model.stream(ids, **params)  # checked by the server already
            except Exception as exc:
                self.events.append((jid, Piece("", (), error=_one_line(exc), error_status=400)))
                self.events.append((jid, Outcome("error", (), 0.0, 0.0, True)))
                return
            self.jobs[jid] = _Job(stream)
        elif kind == "room":
            for jid, n in msg[1].items():
                job = self.jobs.get(jid)
                if job is not None:
                    job.room += n
        elif kind == "cancel":
            job = self.jobs.get(msg[1])
            if job is not None:
                job.cancelled = True
        elif kind == "close":
            self.closing = True

    def drain(self, timeout: float | None = 0.0) -> None:
        """Take every message waiting (``timeout``: how long to wait for the first)."""
        while self.conn.poll(timeout):
            self.handle(self.conn.recv())  # EOFError: the server is gone
            timeout = 0.0

    def flush(self) -> None:
        """Send the events gathered (a round's, or FLUSH_S worth); each message wakes the
        server's event loop, so fast models' pieces go several to one."""
        if self.events:
            self.conn.send(("events", self.events))
            self.events = []
        self.flushed = time.perf_counter()

    # ------------------------------------------------------------ stepping
    def step(self, jid: int, job: _Job) -> None:
        if job.cancelled:
            job.stream.close()  # stops its generator, frees its KV cache
            self.events.append((jid, _outcome(job.stream, False)))
            del self.jobs[jid]
            return
        piece, over = advance(job.stream, job.seen)
        job.seen += len(piece.token_ids)
        job.room -= 1
        self.events.append((jid, piece))
        if over:
            self.events.append((jid, _outcome(job.stream, piece.error is not None)))
            del self.jobs[jid]

    def run(self) -> None:
        while True:
            runnable = [(j, job) for j, job in self.jobs.items() if job.cancelled or job.room > 0]
            if not runnable:
                self.flush()
                if self.closing and not self.jobs:
                    return
                self.drain(None)  # nothing to do until the server says something
                continue
            for jid, job in runnable:
                self.drain()
                if self.jobs.get(jid) is job:
                    self.step(jid, job)
                if time.perf_counter() - self.flushed >= FLUSH_S:
                    self.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd, path, threads = int(args[0]), args[1], int(args[2])
    # A Ctrl-C at the terminal reaches the whole process group: the server lets its
    # generations finish, then closes this process; it must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        from edgeinfer.runtime.model import load

        model: Any = load(path, threads=threads or None)
        model.warmup()
    except Exception as exc:
        conn.send(("failed", _one_line(exc)))
        return 1
    conn.send(("ready", os.getpid()))
    worker = _Worker(conn, model)
    try:
        worker.run()
    except (EOFError, OSError):  # the server went away: so does this process
        return 0
    finally:
        for job in worker.jobs.values():
            job.stream.close()
    return 0
