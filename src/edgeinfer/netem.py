"""A user-space network emulator: a TCP proxy on loopback that makes a link slow or broken.

Tests, benchmarks, the demo and ``edgeinfer netem`` put :class:`NetemProxy` between a
client and a real server to give the link a round-trip time, jitter, a bandwidth limit,
connection loss and outages, and change them while traffic flows::

    with NetemProxy("127.0.0.1:8000", rtt=0.05, rate="10mbit") as proxy:
        client = RemoteModel(proxy.url, "digits")
        proxy.set(rate="1mbit")          # live: the next bytes see the new link
        proxy.outage(10.0)               # nothing gets through for 10 s

How each condition is emulated (in user space, so only approximately):

- ``rtt``: every chunk of bytes is delivered ``rtt / 2`` after it was sent, each way.
  ``jitter`` adds a uniform ``[-jitter, +jitter]`` per chunk; bytes never overtake each
  other (a TCP stream cannot reorder). The event loop sleeps with ~1 ms resolution.
- ``rate`` (or ``rate_up``/``rate_down``): one token bucket per direction, shared by every
  connection, as one physical link would be. A chunk waits until the bucket has paid for it
  (``burst`` bytes may pass at once) and the sender is held back meanwhile.
- ``loss``: the probability that forwarding a chunk kills the connection (both sides see a
  reset). Packet loss on a real link is hidden by TCP's retransmission and shows up as
  latency (use ``jitter``); what reaches an application is a dropped connection.
- ``outage``: ``"blackhole"`` holds every byte (new connections are accepted but go
  nowhere) until the outage ends, so clients run into their timeouts; ``"refuse"`` stops
  listening and resets open connections, so clients see "connection refused" at once.

:class:`NetemProcess` runs the same proxy in a child process, with the same control API,
for measurements that must not share an interpreter lock with the link.

:class:`EmulatedDevice` is the device-side counterpart: it makes a local model look
``slowdown`` times slower by sleeping after each call. It is emulation for benchmarks and
the demo, not a measurement of a real device.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np

from edgeinfer.errors import InputError

__all__ = [
    "Conditions",
    "EmulatedDevice",
    "NetemProcess",
    "NetemProxy",
    "NetemStats",
    "OutageMode",
    "parse_address",
    "parse_duration",
    "parse_rate",
]

OutageMode = Literal["blackhole", "refuse"]
_CHUNK = 16384  # bytes read at a time: large transfers stream through the link in pieces

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(us|ms|s|m)\s*$", re.I)
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)bit(?:/s)?\s*$", re.I)
_RATE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_duration(value: str | float, what: str = "duration") -> float:
    """Seconds from ``"50ms"``, ``"2s"``, ``"250us"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise InputError(
                f"{what} {value!r} not understood; expected a number with a unit, "
                "such as '50ms', '2s' or '250us'"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    if seconds < 0:
        raise InputError(f"{what} {value!r} is negative; expected a time >= 0")
    return seconds


def parse_rate(value: str | float | None, what: str = "rate") -> float | None:
    """Bits per second from ``"10mbit"``, ``"500kbit"``, ``"1gbit"`` or a number (bit/s).

    ``None`` (or ``"0"``/``0``) means unlimited.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bits = float(value)
    elif str(value).strip() in ("0", "none", "unlimited"):
        return None
    else:
        m = _RATE.match(str(value))
        if not m:
            raise InputError(
                f"{what} {value!r} not understood; expected bits per second with a unit, "
                "such as '10mbit', '500kbit' or '1gbit'"
            )
        bits = float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    if bits < 0:
        raise InputError(f"{what} {value!r} is negative; expected bits per second > 0")
    return bits or None


def parse_address(value: str | tuple[str, int]) -> tuple[str, int]:
    """``("127.0.0.1", 8000)`` from ``"127.0.0.1:8000"`` (or a pair, checked)."""
    if isinstance(value, tuple):
        host, port = value
    else:
        host, sep, port_text = str(value).rpartition(":")
        if not sep or not port_text.isdigit():
            raise InputError(f"address {value!r} not understood; expected HOST:PORT")
        port = int(port_text)
    host = host.strip("[]") or "127.0.0.1"
    if not 0 <= int(port) <= 65535:
        raise InputError(f"port {port} is out of range; expected 0..65535")
    return host, int(port)


@dataclass(frozen=True)
class Conditions:
    """What the emulated link does to traffic. Change them live with :meth:`NetemProxy.set`."""

    rtt: float = 0.0  # seconds added to a round trip (half each way)
    jitter: float = 0.0  # seconds: each chunk's one-way delay varies by up to +- this
    rate_up: float | None = None  # bits/s client -> server; None: unlimited
    rate_down: float | None = None  # bits/s server -> client; None: unlimited
    loss: float = 0.0  # probability per forwarded chunk that the connection is reset
    burst: int = 1500  # bytes the token bucket lets through at once (one packet)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise InputError(f"loss {self.loss!r} is not a probability; expected 0..1")
        if self.burst < 1:
            raise InputError(f"burst {self.burst!r} must be at least 1 byte")

    @classmethod
    def of(cls, base: Conditions | None = None, **changes: Any) -> Conditions:
        """``base`` with ``changes``, parsing strings (``rtt="50ms"``, ``rate="10mbit"``).

        ``rate`` sets both directions; ``rate_up``/``rate_down`` set one.
        """
        unknown = set(changes) - {"rtt", "jitter", "rate", "rate_up", "rate_down", "loss", "burst"}
        if unknown:
            raise InputError(
                f"unknown link condition(s) {', '.join(sorted(unknown))}; expected rtt, "
                "jitter, rate, rate_up, rate_down, loss or burst"
            )
        fields: dict[str, Any] = {}
        for key in ("rtt", "jitter"):
            if key in changes:
                fields[key] = parse_duration(changes[key], key)
        if "rate" in changes:
            fields["rate_up"] = fields["rate_down"] = parse_rate(changes["rate"], "rate")
        for key in ("rate_up", "rate_down"):
            if key in changes:
                fields[key] = parse_rate(changes[key], key)
        if "loss" in changes:
            fields["loss"] = float(changes["loss"])
        if "burst" in changes:
            fields["burst"] = int(changes["burst"])
        return replace(base or cls(), **fields)


@dataclass
class NetemStats:
    """What went through the proxy since it started."""

    connections: int = 0  # accepted from clients
    bytes_up: int = 0  # client -> server, delivered
    bytes_down: int = 0  # server -> client, delivered
    resets: int = 0  # connections killed by loss or a "refuse" outage


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


class _Endpoint:
    """Where a proxy listens, and its context-manager form (shared by both proxies)."""

    _listen: tuple[str, int]
    _port: int

    def start(self: _E) -> _E:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _E) -> _E:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._listen[0]

    @property
    def port(self) -> int:
        """The port clients connect to (known once started)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the proxy, for HTTP clients."""
        return f"http://{self.address}"


_E = TypeVar("_E", bound=_Endpoint)


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
        self._restored = asyncio.Event()
        self._restored.set()
        await self._listen_now(self._listen[1])

    async def _listen_now(self, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, self._listen[0], port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
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
            if sent > now:
                await asyncio.sleep(sent - now)  # the sender waits for the link
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


def _child_main() -> None:
    """Entry point of :class:`NetemProcess`'s child: argv is ``HOST:PORT`` and the key."""
    import sys
    from multiprocessing.connection import Client

    host, _, port = sys.argv[1].rpartition(":")
    conn = Client((host, int(port)), authkey=bytes.fromhex(sys.argv[2]))
    target, listen, seed, cond = conn.recv()
    try:
        proxy = NetemProxy(target, listen, seed=seed).start()
        proxy.conditions = cond
    except BaseException as exc:  # reported to the parent
        conn.send(("error", exc))
        return
    conn.send(("ok", proxy.port))
    try:
        while True:
            op, args, kwargs = conn.recv()
            try:
                if op == "stop":
                    break
                if op == "get":
                    result: Any = getattr(proxy, args[0])
                else:
                    result = getattr(proxy, op)(*args, **kwargs)
            except Exception as exc:
                conn.send(("error", exc))
            else:
                conn.send(("ok", result))
    except (EOFError, OSError):
        pass  # the parent went away
    finally:
        proxy.stop()
        conn.close()


class NetemProcess(_Endpoint):
    """A :class:`NetemProxy` in a child process, with the same control API.

    Benchmarks use it so that the emulated link never waits for the interpreter lock of
    the process it is measuring (and the measured process never waits for the link's).
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        listen: str | tuple[str, int] = "127.0.0.1:0",
        *,
        seed: int | None = None,
        **conditions: Any,
    ) -> None:
        host, port = parse_address(target)
        self.target = (host, port)
        self._listen = parse_address(listen)
        self._seed = seed
        self._initial = Conditions.of(None, **conditions)
        self._conn: Any = None
        self._proc: Any = None
        self._port = 0
        self._lock = threading.Lock()

    def start(self) -> NetemProcess:
        import secrets
        import subprocess
        import sys
        from multiprocessing.connection import Listener

        if self._proc is not None:
            return self
        key = secrets.token_bytes(16)
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            host, port = listener.address
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from edgeinfer.netem import _child_main; _child_main()",
                 f"{host}:{port}", key.hex()],
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            self._conn = self._accept(listener)
        self._conn.send(
            (
                f"{self.target[0]}:{self.target[1]}",
                f"{self._listen[0]}:{self._listen[1]}",
                self._seed,
                self._initial,
            )
        )
        status, value = self._conn.recv()
        if status == "error":
            self.stop()
            raise value
        self._port = int(value)
        return self

    def _accept(self, listener: Any) -> Any:
        """The child's connection; a clear error if the child dies or never calls."""
        got: list[Any] = []

        def accept() -> None:
            with contextlib.suppress(OSError, EOFError):
                got.append(listener.accept())

        waiter = threading.Thread(target=accept, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 60.0
        while waiter.is_alive() and time.monotonic() < deadline:
            waiter.join(0.05)
            if self._proc.poll() is not None and not got:
                break
        if not got:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            raise InputError("the netem process did not start (see its stderr)")
        return got[0]

    def _ask(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise InputError("the netem process is not running; call start() first")
        try:
            with self._lock:
                self._conn.send((op, args, kwargs))
                status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise InputError(f"the netem process is gone: {exc!r}") from None
        if status == "error":
            raise value
        return value

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._conn is not None:
            with contextlib.suppress(OSError), self._lock:
                self._conn.send(("stop", (), {}))
            self._conn.close()
        try:
            self._proc.wait(10)
        except Exception:
            self._proc.kill()
            self._proc.wait()
        self._proc = self._conn = None

    def set(self, **changes: Any) -> Conditions:
        """Change the link now (as :meth:`NetemProxy.set`)."""
        Conditions.of(self._initial, **changes)  # bad values fail here, with their message
        result: Conditions = self._ask("set", **changes)
        return result

    def outage(
        self, seconds: float | None, *, after: float = 0.0, mode: OutageMode = "blackhole"
    ) -> None:
        self._ask("outage", seconds, after=after, mode=mode)

    def restore(self) -> None:
        self._ask("restore")

    @property
    def conditions(self) -> Conditions:
        result: Conditions = self._ask("get", "conditions")
        return result

    @property
    def stats(self) -> NetemStats:
        result: NetemStats = self._ask("get", "stats")
        return result

    @property
    def in_outage(self) -> bool:
        return bool(self._ask("get", "in_outage"))


class EmulatedDevice:
    """A local model made to look ``slowdown`` times slower: emulation, not measurement.

    Each ``predict`` runs the real model, then sleeps ``(slowdown - 1)`` times as long as
    the run took, so latency (and the compute time an energy model charges for) is that of
    a device ``slowdown`` times slower than this machine. Everything else is the model's.
    """

    def __init__(self, model: Any, slowdown: float = 1.0) -> None:
        if slowdown < 1.0:
            raise InputError(f"slowdown {slowdown!r} must be >= 1 (this machine is the fastest)")
        self.model = model
        self.slowdown = float(slowdown)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"EmulatedDevice({self.model!r}, slowdown={self.slowdown:g})"

    def predict(self, inputs: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        result: dict[str, np.ndarray] = self.model.predict(inputs, outputs)
        if self.slowdown > 1.0:
            time.sleep((time.perf_counter() - start) * (self.slowdown - 1.0))
        return result
