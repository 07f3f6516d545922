"""A small closed-loop load generator for inference servers: raw HTTP/1.1 and grpc.aio.

``concurrency`` workers each send the same prepared request back to back over their own
keep-alive connection (REST) or a shared channel (gRPC) for a fixed time, and record each
request's latency and status. The HTTP client is a few dozen lines over asyncio streams so
that the client costs little CPU beside the server (httpx costs several times more per
request); every server under test gets the same generator.

What a worker does after a refused request (503 over REST, UNAVAILABLE over gRPC) is its
:class:`Backoff`: retry at once (the harshest client), wait a fixed time, or -- what a
well-behaved production client does -- wait as long as the server asked (``Retry-After-Ms``,
else ``Retry-After`` in seconds; gRPC: ``retry-after-ms`` trailing metadata) plus jitter.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Backoff:
    """A client's wait after a refused request.

    ``mode``: ``"instant"`` (retry at once), ``"fixed"`` (wait ``fixed_s``) or ``"server"``
    (wait the server's suggestion times ``uniform(1, 1 + jitter)``, never less than it asked;
    ``fallback_s`` when it suggested nothing).
    """

    mode: str = "instant"
    fixed_s: float = 0.0  # seconds, mode "fixed"
    jitter: float = 0.5  # mode "server": up to this fraction longer than asked
    fallback_s: float = 0.01  # seconds, mode "server" without a suggestion

    def delay(self, suggested_s: float | None, rng: random.Random) -> float:
        if self.mode == "instant":
            return 0.0
        if self.mode == "fixed":
            return self.fixed_s
        if suggested_s is None:
            return self.fallback_s
        return suggested_s * (1.0 + self.jitter * rng.random())

    def label(self) -> str:
        if self.mode == "fixed":
            return f"fixed {self.fixed_s * 1e3:g} ms"
        if self.mode == "server":
            return f"server Retry-After x U(1, {1 + self.jitter:g})"
        return "instant retry"


INSTANT = Backoff()


@dataclass
class Result:
    seconds: float
    latencies_ok: list[float] = field(default_factory=list)  # seconds, successful requests
    latencies_rejected: list[float] = field(default_factory=list)  # 503 / UNAVAILABLE ...
    statuses: dict[str, int] = field(default_factory=dict)
    suggested_s: list[float] = field(default_factory=list)  # servers' retry suggestions
    waited_s: float = 0.0  # total time workers spent backing off

    @property
    def ok(self) -> int:
        return len(self.latencies_ok)

    @property
    def requests(self) -> int:
        return len(self.latencies_ok) + len(self.latencies_rejected)

    @classmethod
    def merge(cls, results: list[Result]) -> Result:
        """One result from several runs (their times add up)."""
        out = cls(sum(r.seconds for r in results))
        for r in results:
            out.latencies_ok += r.latencies_ok
            out.latencies_rejected += r.latencies_rejected
            out.suggested_s += r.suggested_s
            out.waited_s += r.waited_s
            for k, v in r.statuses.items():
                out.statuses[k] = out.statuses.get(k, 0) + v
        return out

    def summary(self) -> dict[str, Any]:
        ok = sorted(self.latencies_ok)
        rej = sorted(self.latencies_rejected)
        out: dict[str, Any] = {
            "seconds": round(self.seconds, 3),
            "requests": len(ok) + len(rej),
            "ok": len(ok),
            "rps": round(len(ok) / self.seconds, 1),
            "statuses": self.statuses,
        }
        if ok:
            out.update(
                p50_ms=round(_pct(ok, 50) * 1e3, 3),
                p90_ms=round(_pct(ok, 90) * 1e3, 3),
                p99_ms=round(_pct(ok, 99) * 1e3, 3),
                mean_ms=round(statistics.fmean(ok) * 1e3, 3),
            )
        if rej:
            out.update(
                rejected=len(rej),
                rejected_p50_ms=round(_pct(rej, 50) * 1e3, 3),
                rejected_p99_ms=round(_pct(rej, 99) * 1e3, 3),
            )
        if self.suggested_s:
            sug = sorted(self.suggested_s)
            out.update(
                retry_after_p50_ms=round(_pct(sug, 50) * 1e3, 3),
                retry_after_p99_ms=round(_pct(sug, 99) * 1e3, 3),
            )
        if self.waited_s:
            out["backoff_s_total"] = round(self.waited_s, 3)
        return out


def _pct(sorted_xs: list[float], p: float) -> float:
    k = min(len(sorted_xs) - 1, max(0, round(p / 100 * (len(sorted_xs) - 1))))
    return sorted_xs[k]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; POSTs a prepared request, reads the answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.retry_after_s: float | None = None  # the last answer's suggestion, if any

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        retry_ms = retry_s = None
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
            elif key == b"retry-after-ms":
                retry_ms = float(value) / 1e3
            elif key == b"retry-after" and value.strip().isdigit():
                retry_s = float(value)
            elif key == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this client")
        body = await self.reader.readexactly(length) if length else b""
        self.retry_after_s = retry_ms if retry_ms is not None else retry_s
        if close:
            self.writer.close()
            self.writer = None
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_http(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    seconds: float,
    warmup_s: float = 0.3,
    max_requests: int | None = None,
    backoff: Backoff = INSTANT,
    seed: int = 0,
) -> Result:
    """Closed loop over ``concurrency`` connections for ``seconds`` (after a warm-up).

    With ``max_requests``, runs until that many answers were recorded instead. ``backoff``:
    what a worker does after a refused request before its next one.
    """
    conns = [HttpConnection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    result = Result(seconds)
    state = {"record": False, "stop": False, "count": 0}

    async def worker(conn: HttpConnection, rng: random.Random) -> None:
        while not state["stop"]:
            start = time.perf_counter()
            try:
                status, _ = await conn.send(request)
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 599
                conn.writer = None
            elapsed = time.perf_counter() - start
            if state["record"]:
                key = str(status)
                result.statuses[key] = result.statuses.get(key, 0) + 1
                (result.latencies_ok if status == 200 else result.latencies_rejected).append(
                    elapsed
                )
                state["count"] += 1
                if max_requests is not None and state["count"] >= max_requests:
                    state["stop"] = True
                    state["record"] = False
            if status != 200:
                await _back_off(backoff, conn.retry_after_s, rng, result, bool(state["record"]))

    tasks = [
        asyncio.create_task(worker(c, random.Random(seed * 1000 + i))) for i, c in enumerate(conns)
    ]
    await asyncio.sleep(warmup_s)
    state["record"] = True
    started = time.perf_counter()
    if max_requests is None:
        await asyncio.sleep(seconds)
        state["stop"] = True
        state["record"] = False
    else:
        while not state["stop"]:
            await asyncio.sleep(0.01)
    result.seconds = time.perf_counter() - started
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        c.close()
    return result


async def _back_off(
    backoff: Backoff, suggested: float | None, rng: random.Random, result: Result, record: bool
) -> None:
    delay = backoff.delay(suggested, rng)
    if record:
        if suggested is not None:
            result.suggested_s.append(suggested)
        result.waited_s += delay
    if delay > 0:
        await asyncio.sleep(delay)


def _grpc_retry_after(exc: Any) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            return float(value) / 1e3
    return None


async def run_grpc(
    target: str,
    method: str,
    request: bytes,
    concurrency: int,
    seconds: float,
    warmup_s: float = 0.3,
    channels: int = 4,
    max_requests: int | None = None,
    backoff: Backoff = INSTANT,
    seed: int = 0,
) -> Result:
    """Closed loop of ``concurrency`` unary calls in flight over a few channels.

    ``max_requests`` and ``backoff`` as in :func:`run_http`.
    """
    import grpc

    chans = [grpc.aio.insecure_channel(target) for _ in range(min(channels, concurrency))]
    calls = [ch.unary_unary(method) for ch in chans]  # bytes in, bytes out
    result = Result(seconds)
    state = {"record": False, "stop": False, "count": 0}

    async def worker(i: int, rng: random.Random) -> None:
        call = calls[i % len(calls)]
        while not state["stop"]:
            start = time.perf_counter()
            suggested = None
            try:
                await call(request)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                suggested = _grpc_retry_after(exc)
            elapsed = time.perf_counter() - start
            if state["record"]:
                result.statuses[code] = result.statuses.get(code, 0) + 1
                (result.latencies_ok if code == "OK" else result.latencies_rejected).append(elapsed)
                state["count"] += 1
                if max_requests is not None and state["count"] >= max_requests:
                    state["stop"] = True
                    state["record"] = False
            if code != "OK":
                await _back_off(backoff, suggested, rng, result, bool(state["record"]))

    tasks = [
        asyncio.create_task(worker(i, random.Random(seed * 1000 + i))) for i in range(concurrency)
    ]
    await asyncio.sleep(warmup_s)
    state["record"] = True
    started = time.perf_counter()
    if max_requests is None:
        await asyncio.sleep(seconds)
        state["stop"] = True
        state["record"] = False
    else:
        while not state["stop"]:
            await asyncio.sleep(0.01)
    result.seconds = time.perf_counter() - started
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in chans:
        await ch.close()
    return result
