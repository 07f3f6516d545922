"""A generative model's generations in a child process, read by the server's event loop.

onnxruntime-genai's binding holds the interpreter lock while it computes a token, so a
stepper thread in the server's process makes every other request (a health check, a
predictive model's inference) wait for the token being computed. A
:class:`GenerationProcess` runs the stepping in a child of its own
(:mod:`edgeinfer.serve.genworker`, a fresh interpreter: ``python -m``, never a fork of a
server with threads) and reads its pieces on the event loop: the connection's file
descriptor is registered with the loop (``add_reader``), so no thread of the server's
waits on it and nothing here computes.

It is a :class:`~edgeinfer.serve.stepper.Driver` of
:class:`~edgeinfer.serve.stepper.GenerationJob`: a job's reader taking a piece gives the
child room for one more (credits, batched per turn of the loop), a cancellation goes to
the child, which closes the stream at its next turn.

A child that dies (killed, out of memory) ends its running generations with an error
piece (status 503) and is started again; after :data:`MAX_RESTARTS` deaths within
:data:`RESTART_WINDOW_S` the model is reported unavailable (503 on every generation)
until it is reloaded. The child exits with the server: :meth:`close`, or the end of file
on its connection when the server's process is gone however it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edgeinfer.serve.errors import ModelLoadError, ModelNotReady
from edgeinfer.serve.genworker import Outcome
from edgeinfer.serve.stepper import GenerationJob, Piece

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "START_TIMEOUT_S", "GenerationProcess"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # a child loading a model (and verifying its bundle) at most this long
MAX_RESTARTS = 3  # child deaths within RESTART_WINDOW_S before the model is unavailable
RESTART_WINDOW_S = 60.0
CLOSE_TIMEOUT_S = 10.0  # a closing child's time to exit before it is killed


_CHILD_MAIN = "import sys; from edgeinfer.serve.genworker import main; sys.exit(main())"


def _package_root() -> str:
    """The directory edgeinfer is imported from (the child imports the same copy)."""
    return str(Path(__file__).resolve().parents[2])


class GenerationProcess:
    """One child process stepping generations of the model at ``path`` in turn.

    Built on any thread (the repository loads models on worker threads): it starts the
    child and waits for it to be ready, raising :class:`ModelLoadError` when the child
    cannot load the model. Everything else runs on the event loop.
    """

    def __init__(
        self,
        label: str,
        path: Path,
        threads: int | None,
        over: Callable[[GenerationJob], None],
    ) -> None:
        self.label = label  # the model's name, for messages
        self.path = path
        self.threads = threads
        self._over = over  # on the loop, once a job is over
        self._jobs: dict[int, GenerationJob] = {}
        self._ids: dict[GenerationJob, int] = {}
        self._next_id = 0
        self._credits: dict[int, int] = {}
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attached = False
        self._restart: asyncio.Task[None] | None = None
        self._deaths: list[float] = []
        # jobs given to the child that have had no piece yet: run again if the child dies
        self._unstarted: dict[int, tuple[list[int], dict[str, Any]]] = {}
        self._retry: list[tuple[GenerationJob, list[int], dict[str, Any]]] = []
        self._retried: set[GenerationJob] = set()
        self._why = ""
        self.unavailable: str | None = None  # why the model cannot generate any more
        self._closing = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.pid = 0
        self._spawn()

    @property
    def jobs(self) -> int:
        """Jobs given to the child and not over yet."""
        return len(self._jobs)

    # ------------------------------------------------------------ the child
    def _spawn(self) -> None:
        """Start the child and wait (blocking) until it has loaded the model."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # genworker imported by its name (not run as __main__), so that what it pickles
        # names its own module
        cmd = [sys.executable, "-c", _CHILD_MAIN]
        cmd += [str(theirs.fileno()), str(self.path), str(self.threads or 0)]
        conn = Connection(ours.detach())
        try:
            proc = subprocess.Popen(
                cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            conn.close()
            raise ModelLoadError(f"model {self.label!r}: no generation process: {exc}") from None
        finally:
            theirs.close()
        try:
            if not conn.poll(START_TIMEOUT_S):
                raise ModelLoadError(
                    f"model {self.label!r}: its generation process did not load it within "
                    f"{START_TIMEOUT_S:.0f} s"
                )
            msg = conn.recv()
        except (EOFError, OSError, ModelLoadError) as exc:
            conn.close()
            self._reap(proc)
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(
                f"model {self.label!r}: its generation process exited while loading "
                f"(exit code {proc.returncode})"
            ) from None
        if msg[0] != "ready":
            conn.close()
            self._reap(proc)
            raise ModelLoadError(f"model {self.label!r}: its generation process: {msg[1]}")
        self.proc, self.conn, self.pid = proc, conn, int(msg[1])
        self._attached = False
        log.info("model %s: generation process ready (pid %d)", self.label, self.pid)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Wait for ``proc`` to exit (it was told to, or its connection closed); then kill."""
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _attach(self) -> None:
        """On the loop: read the child's connection there (once per child)."""
        if self._attached or self.conn is None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.conn.fileno(), self._readable)
        self._attached = True

    def _detach(self) -> None:
        if self._attached and self._loop is not None and self.conn is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.conn.fileno())
        self._attached = False

    # ------------------------------------------------------------ the loop's side
    async def ready(self) -> None:
        """Wait while the child restarts; raise :class:`ModelNotReady` if it cannot."""
        self._attach()
        if self._restart is not None:
            await asyncio.shield(self._restart)
        if self.unavailable is not None:
            raise ModelNotReady(self.unavailable)
        self._attach()

    def submit(self, job: GenerationJob, ids: list[int], params: dict[str, Any]) -> None:
        """Hand ``job`` (the prompt's token ids, checked parameters) to the child."""
        jid = self._next_id
        self._next_id += 1
        self._jobs[jid] = job
        self._ids[job] = jid
        self._unstarted[jid] = (ids, params)
        self._send(("start", jid, ids, params))

    def taken(self, job: GenerationJob) -> None:
        jid = self._ids.get(job)
        if jid is None:
            return
        self._credits[jid] = self._credits.get(jid, 0) + 1
        if not self._flush_due and self._loop is not None:
            self._flush_due = True  # one message for every piece taken in this turn
            self._loop.call_soon(self._flush_credits)

    def cancel(self, job: GenerationJob) -> None:
        jid = self._ids.get(job)
        if jid is not None:
            self._send(("cancel", jid))

    def _flush_credits(self) -> None:
        self._flush_due = False
        credits = {j: n for j, n in self._credits.items() if j in self._jobs}
        self._credits.clear()
        if credits:
            self._send(("room", credits))

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(msg)
        except OSError:  # the child is gone: the reader hears it too
            self._lost()

    def _readable(self) -> None:
        conn = self.conn
        try:
            while conn is not None and conn.poll():
                msg = conn.recv()
                if msg[0] == "events":
                    self._events(msg[1])
        except (EOFError, OSError):
            self._lost()
        except Exception:  # a message it cannot read: the child is not one to trust
            log.exception("model %s: generation process %d: bad message", self.label, self.pid)
            if self.proc is not None:
                self.proc.kill()
            self._lost()

    def _events(self, events: list[tuple[int, Piece | Outcome]]) -> None:
        for jid, event in events:
            job = self._jobs.get(jid)
            if job is None:
                continue
            if isinstance(event, Piece):
                self._unstarted.pop(jid, None)
                job._pieces.put_nowait(event)
            else:
                job.result = event
                job.failed = event.failed
                self._end(jid, job)

    def _end(self, jid: int, job: GenerationJob) -> None:
        del self._jobs[jid]
        self._ids.pop(job, None)
        self._credits.pop(jid, None)
        self._unstarted.pop(jid, None)
        self._retried.discard(job)
        self._over(job)

    def _lost(self) -> None:
        """The child died (or its connection broke): fail its streams, then start another.

        A job that has had no piece yet (its answer has not begun) is not failed but run
        again by the next child, once: a child that dies of that very prompt fails it the
        second time."""
        if self.conn is None:
            return
        self._detach()
        self.conn.close()
        self.conn = None
        proc = self.proc
        code = proc.poll() if proc is not None else None
        if self._closing:
            return
        why = f"exit code {code}" if code is not None else "connection lost"
        self._why = (
            f"model {self.label!r}: the generation process stopped ({why}) during the "
            "generation; retry"
        )
        log.error("model %s: generation process %d stopped (%s)", self.label, self.pid, why)
        for jid, job in list(self._jobs.items()):
            request = self._unstarted.pop(jid, None)
            if request is not None and not job.cancelled and job not in self._retried:
                self._retry.append((job, *request))
                del self._jobs[jid]
                self._ids.pop(job, None)
            else:
                self._fail(jid, job)
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S] + [now]
        if len(self._deaths) > MAX_RESTARTS:
            self.unavailable = (
                f"model {self.label!r} is unavailable: its generation process stopped "
                f"{len(self._deaths)} times within {RESTART_WINDOW_S:.0f} s; reload the model"
            )
            log.error("%s", self.unavailable)
            self._fail_retries()
            if proc is not None:
                self._restart = asyncio.ensure_future(asyncio.to_thread(self._reap, proc))
            return
        self._restart = asyncio.ensure_future(self._respawn(proc))

    def _fail(self, jid: int, job: GenerationJob) -> None:
        job._pieces.put_nowait(Piece("", (), error=self._why, error_status=503))
        job.failed = True
        self._end(jid, job)

    def _fail_retries(self) -> None:
        retry, self._retry = self._retry, []
        for job, _, _ in retry:
            job._pieces.put_nowait(Piece("", (), error=self._why, error_status=503))
            job.failed = True
            self._over(job)

    async def _respawn(self, old: subprocess.Popen[bytes] | None) -> None:
        try:
            if old is not None:
                await asyncio.to_thread(self._reap, old)
            if self._closing:
                self._fail_retries()
                return
            await asyncio.to_thread(self._spawn)
            if self._closing:
                self._fail_retries()
                await self._stop()
                return
            self._attach()
            retry, self._retry = self._retry, []
            for job, ids, params in retry:
                self._retried.add(job)
                if job.cancelled:  # its client left meanwhile
                    job.result = Outcome("cancelled", (), 0.0, 0.0, False)
                    self._over(job)
                else:
                    self.submit(job, ids, params)
        except ModelLoadError as exc:
            self.unavailable = str(exc)
            log.error("%s", exc)
            self._fail_retries()
        finally:
            self._restart = None

    async def close(self) -> None:
        """Tell the child to finish (its jobs were ended or cancelled) and wait for it."""
        self._closing = True
        if self._restart is not None:
            with contextlib.suppress(Exception):
                await self._restart
        await self._stop()

    async def _stop(self) -> None:
        proc = self.proc
        if self.conn is not None:
            self._send(("close",))
            self._detach()
            if self.conn is not None:
                self.conn.close()
            self.conn = None
        if proc is not None and proc.poll() is None:
            await asyncio.to_thread(self._reap, proc)

    def kill_now(self) -> None:
        """Stop the child at once (the batcher failed to build, or the server stops
        without its loop): closing the connection makes it exit."""
        self._closing = True
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            self._reap(self.proc, 5.0)
