"""The emulator's TCP proxy: one asyncio event loop on a thread, forwarding both ways
through the link's delay, token buckets, loss and outages."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from typing import Any

from edgeinfer.errors import InputError
from edgeinfer.netem._endpoint import _Endpoint
from edgeinfer.netem.conditions import (
    Conditions,
    NetemStats,
    OutageMode,
    parse_address,
)

__all__ = ["NetemProxy"]

_CHUNK = 16384  # bytes read at a time: large transfers stream through the link in pieces
# A sender is held back only while the link is busy for more than this many seconds ahead:
# the little buffer a socket has. Without it every late wake-up of the event loop left the
# link idle (a fast link ran at 60 of 100 Mbit/s); with it the next chunk is already queued.
_SLACK_S = 0.004


class _Bucket:
    """A token bucket in virtual time: when would ``n`` more bytes have left the link?"""

    def __init__(self) -> None:
        self.tokens = float("inf")  # bytes (capped at the burst); negative: the link is busy
        self.stamp = 0.0

    def transmit(self, n: int, now: float, rate_bits: float | None, burst: int) -> float:
        if rate_bits is None:
            self.tokens, self.stamp = float(burst), now
            return now
        rate = rate_bits / 8.0  # bytes/s
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        self.tokens -= n
        return now if self.tokens >= 0 else now - self.tokens / rate


class _Conn:
    """Both sockets of one proxied connection, so an outage or a loss can kill it."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.dead = False

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0), as a broken link looks to TCP."""
        self.dead = True
        for w in (self.client, self.server):
            if w is None:
                continue
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()


class NetemProxy(_Endpoint):
    """A TCP proxy that emulates a link; runs its event loop in a background thread.

    ``target``: the real server (``"HOST:PORT"``); ``listen``: where clients connect
    (default: an ephemeral port on 127.0.0.1, see :attr:`port`/:attr:`url`). Conditions
    are keyword arguments as for :meth:`set`. Use as a context manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        listen: str | tuple[str, int] = "127.0.0.1:0",
        *,
        seed: int | None = None,
        **conditions: Any,
    ) -> None:
        self.target = parse_address(target)
        self._listen = parse_address(listen)
        self.conditions = Conditions.of(None, **conditions)
        self.stats = NetemStats()
        self._rng = random.Random(seed)
        self._up, self._down = _Bucket(), _Bucket()
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0
        self._outage_until = 0.0  # loop time; float("inf") while an open-ended outage lasts
        self._outage_mode: OutageMode = "blackhole"
        self._restored: asyncio.Event | None = None
        self._relistening: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------- sync API
    def start(self) -> NetemProxy:
        """Start listening (returns once clients can connect)."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.close()

        self._thread = threading.Thread(target=main, name=f"netem->{self.target}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise InputError(f"netem cannot listen on {self._listen}: {failure[0]}") from None
        return self

    def stop(self) -> None:
        """Stop the proxy and close every connection through it."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def set(self, **changes: Any) -> Conditions:
        """Change the link now: ``proxy.set(rtt="100ms", rate="1mbit", loss=0.01)``."""
        self.conditions = Conditions.of(self.conditions, **changes)
        return self.conditions

    def outage(
        self, seconds: float | None, *, after: float = 0.0, mode: OutageMode = "blackhole"
    ) -> None:
        """Cut the link for ``seconds`` (``None``: until :meth:`restore`), ``after`` from now."""
        if mode not in ("blackhole", "refuse"):
            raise InputError(f"outage mode {mode!r} not known; expected 'blackhole' or 'refuse'")
        self._call(lambda: self._begin_outage(seconds, mode), delay=after)

    def restore(self) -> None:
        """End an outage now; returns once the proxy accepts connections again."""
        self._call(self._end_outage)
        assert self._loop is not None
        waiting = asyncio.run_coroutine_threadsafe(self._wait_link(), self._loop)
        try:
            waiting.result(timeout=10)
        except TimeoutError:  # another outage began meanwhile: it is in charge now
            waiting.cancel()

    @property
    def in_outage(self) -> bool:
        return self._loop is not None and self._loop.time() < self._outage_until

    def _call(self, fn: Any, delay: float = 0.0) -> None:
        if self._loop is None or self._thread is None:
            raise InputError("the netem proxy is not running; call start() first")
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        if delay > 0:
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, fn)
        else:
            self._loop.call_soon_threadsafe(run)
            done.wait(timeout=10)

    # ------------------------------------------------------------- the loop
    async def _open(self) -> None:
        self._stopping = False
        self._restored = asyncio.Event()
        self._restored.set()
        await self._listen_now(self._listen[1])

    async def _listen_now(self, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._listen[0], port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self._stopping = True  # an outage ending from now on must not listen again
        relisten = self._relistening
        if relisten is not None and not relisten.done():
            # Cancelled inside start_server, it would drop a bound listener unclosed: let it
            # finish, then close what it opened.
            await asyncio.gather(relisten, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.reset()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # transport.abort() closes its socket in a callback: run those before the loop closes
        await asyncio.sleep(0)

    def _begin_outage(self, seconds: float | None, mode: OutageMode) -> None:
        assert self._loop is not None and self._restored is not None
        end = float("inf") if seconds is None else self._loop.time() + seconds
        self._outage_until = max(self._outage_until, end)
        self._outage_mode = mode
        self._restored.clear()
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            for conn in list(self._conns):
                conn.reset()
                self.stats.resets += 1
        if seconds is not None:
            self._loop.call_at(end, self._maybe_end)

    def _maybe_end(self) -> None:
        assert self._loop is not None
        if self._loop.time() >= self._outage_until - 1e-6:
            self._end_outage()

    def _end_outage(self) -> None:
        assert self._loop is not None and self._restored is not None
        self._outage_until = 0.0
        if self._stopping:
            return
        if self._server is None:
            if self._relistening is None or self._relistening.done():
                self._relistening = self._loop.create_task(self._relisten())
        else:
            self._restored.set()

    async def _relisten(self) -> None:
        assert self._restored is not None
        if self._outage_until > 0.0:  # a new outage began before the listener came back
            return
        await self._listen_now(self._port)
        self._restored.set()

    async def _wait_link(self) -> None:
        assert self._restored is not None
        while not self._restored.is_set():
            await self._restored.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            await self._wait_link()  # blackhole: the connection hangs until the link is back
            try:
                sreader, swriter = await asyncio.open_connection(*self.target)
            except OSError:
                conn.reset()  # nothing behind the proxy: the client sees a reset
                return
            conn.server = swriter
            await asyncio.gather(
                self._pipe(reader, swriter, self._up, conn, up=True),
                self._pipe(sreader, writer, self._down, conn, up=False),
            )
        except (ConnectionError, OSError):
            conn.reset()
        except asyncio.CancelledError:  # the proxy is stopping: end quietly
            conn.reset()
        finally:
            self._conns.discard(conn)
            for w in (writer, conn.server):
                if w is not None and not conn.dead:
                    w.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        bucket: _Bucket,
        conn: _Conn,
        *,
        up: bool,
    ) -> None:
        """Forward one direction: pace by the bucket, delay, then deliver in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump() -> None:
            last = 0.0
            try:
                while not conn.dead:
                    try:
                        data = await reader.read(_CHUNK)
                    except (ConnectionError, OSError):
                        data = b""
                    now = loop.time()
                    c = self.conditions
                    if not data:
                        last = max(last, now + c.rtt / 2)  # EOF arrives after the last bytes
                        return
                    if c.loss and self._rng.random() < c.loss:
                        self.stats.resets += 1
                        conn.reset()
                        return
                    last = await forward(data, now, c, last)
            finally:
                queue.put_nowait((last, b""))

        async def forward(data: bytes, now: float, c: Conditions, last: float) -> float:
            rate = c.rate_up if up else c.rate_down
            sent = bucket.transmit(len(data), now, rate, c.burst)
            if sent > now + _SLACK_S:
                await asyncio.sleep(sent - now - _SLACK_S)  # the sender waits for the link
            delay = c.rtt / 2
            if c.jitter:
                delay = max(0.0, delay + self._rng.uniform(-c.jitter, c.jitter))
            last = max(last, sent + delay)
            queue.put_nowait((last, data))
            return last

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._wait_link()
                if conn.dead:
                    return
                if not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError, RuntimeError):
                            writer.write_eof()
                    return
                writer.write(data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await writer.drain()

        pumping = asyncio.ensure_future(pump())
        try:
            await deliver()
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await pumping
