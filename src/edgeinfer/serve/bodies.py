"""Request bodies decoded without stalling the event loop, which answers every client.

Whatever holds the loop holds every client of the server, so how a body is decoded depends
on what the decoding holds:

* a small body (up to ``IN_PLACE_BYTES``) is decoded on the loop: a millisecond at most;
* inflating a body (zlib and zstandard release the interpreter lock while they work) and a
  large binary-extension body (its JSON header is small; the tensors are views of the
  bytes) go to a worker thread, at most ``threads`` at a time;
* a large JSON body goes to a worker *process*. Python's JSON parser holds the interpreter
  lock for the whole document -- 2.4 s for 41 MiB of float32 values on 2 cores -- so on a
  thread it stalls the loop exactly as it would on the loop. The child parses it with the
  same codec (:func:`~edgeinfer.protocol.rest.decode_request`) and sends back the request,
  its arrays pickled as raw buffers; the loop meanwhile answers everyone else.

The child is started on first use with ``python -c`` (not multiprocessing, which would
re-run an embedding program's main script in the child), talks over its own stdin/stdout
pipes in length-prefixed pickles, and is started again if it dies. One request at a time
goes to it: one core parses, the other serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any, TypeVar

from edgeinfer.errors import EdgeInferError
from edgeinfer.protocol import rest
from edgeinfer.protocol.limits import Limits
from edgeinfer.protocol.types import InferenceRequest

__all__ = ["IN_PLACE_BYTES", "BodyDecoder"]

log = logging.getLogger(__name__)

IN_PLACE_BYTES = 256 << 10  # bodies up to this long are decoded on the event loop
_T = TypeVar("_T")
_LEN = struct.Struct("<Q")
_CHILD = "from edgeinfer.serve.bodies import _child_main; _child_main()"


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None  # the other side closed the pipe
    (size,) = _LEN.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_LEN.pack(len(data)))
    stream.write(data)
    stream.flush()


def _child_main() -> None:
    """The JSON decoder process: ``(header_length, limits)`` and the body in (two frames,
    the body as it is), ``("ok", request)`` or ``("error", exception)`` out, until its
    stdin closes."""
    requests = sys.stdin.buffer
    answers = open(sys.stdout.fileno(), "wb", closefd=False)  # noqa: SIM115
    sys.stdout = sys.stderr  # anything printed by accident must not corrupt the frames
    while (frame := _read_frame(requests)) is not None:
        header_length, limits = pickle.loads(frame)
        body = _read_frame(requests)
        if body is None:
            return
        try:
            answer: tuple[str, Any] = ("ok", rest.decode_request(body, header_length, limits))
        except Exception as exc:  # a malformed body: the parent raises it as its own
            answer = ("error", exc)
        del body
        _write_frame(answers, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


class _Child:
    """The decoder process and the pipes to it; one exchange at a time (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        log.debug("JSON decoder process %d started", proc.pid)
        return proc

    def decode(self, body: bytes, header_length: int | None, limits: Limits) -> InferenceRequest:
        """On a worker thread: hand the body to the child and wait for its answer. Holding
        the lock to the end keeps the pipes in step even if the awaiting request is gone."""
        head = pickle.dumps((header_length, limits), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                log.warning(
                    "the JSON decoder process ended (%s); starting another", self._proc.returncode
                )
                self._stop(self._proc)  # its pipes
                self._proc = None
            if self._proc is None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write_frame(proc.stdin, head)
                _write_frame(proc.stdin, body)  # as it is: no copy of a large body
                frame = _read_frame(proc.stdout)
            except OSError:
                frame = None
            if frame is None:
                self._stop(proc)
                self._proc = None
                raise EdgeInferError(
                    "the JSON decoder process ended while decoding the request body "
                    "(out of memory?); it is started again for the next request"
                )
        status, value = pickle.loads(frame)  # from the child: edgeinfer's own objects
        if status == "error":
            raise value
        result: InferenceRequest = value
        return result

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)  # its stdin closes: it ends its loop
                self._proc = None


class BodyDecoder:
    """Decodes request bodies on the loop, a thread or the decoder process (see the module)."""

    def __init__(self, threads: int = 2) -> None:
        self._threads = threads
        self._slots: asyncio.Semaphore | None = None  # made on the server's own loop
        self._child = _Child()
        # Requests waiting for the child wait here, on the loop, rather than each holding
        # one of the few threads of the loop's default executor.
        self._turn: asyncio.Lock | None = None

    async def off_loop(self, fn: Any, body: bytes, *args: Any, **kwargs: Any) -> _T:
        """``fn(body, ...)``: in place for a small body, else on a worker thread."""
        if len(body) <= IN_PLACE_BYTES:
            result: _T = fn(body, *args, **kwargs)
            return result
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._threads)
        async with self._slots:
            return await asyncio.to_thread(fn, body, *args, **kwargs)  # type: ignore[no-any-return]

    async def request(
        self, body: bytes, header_length: int | None, limits: Limits
    ) -> InferenceRequest:
        """A REST inference request from its (already inflated) body."""
        json_bytes = len(body) if header_length is None else min(header_length, len(body))
        if json_bytes <= IN_PLACE_BYTES:
            decoded: InferenceRequest = await self.off_loop(
                rest.decode_request, body, header_length, limits
            )
            return decoded
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            return await asyncio.to_thread(self._child.decode, body, header_length, limits)

    def close(self) -> None:
        """End the decoder process, if one was started."""
        self._child.close()
