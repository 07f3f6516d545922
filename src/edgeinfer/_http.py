"""HTTP/1.1 connections bounded against clients that never finish a request (ADR 0014).

Shared by every uvicorn server edgeinfer runs: ``edgeinfer serve``'s REST port and the
fleet service (``edgeinfer fleet serve``); each passes its own :class:`HttpLimits`
(:class:`~edgeinfer.serve.config.ServeConfig` is one). A leaf of the import layers
(ADR 0012): it imports nothing of edgeinfer.

uvicorn's httptools protocol bounds nothing a client sends before the application sees a
request: a header grows until memory runs out (the parser keeps a partial value in one
growing bytes object), a connection that never completes its request line is held forever
(uvicorn arms its keep-alive timer only after a response), and so is a body that stops short
of its Content-Length. :class:`GuardedHttpToolsProtocol` adds, per connection, from the
server's :class:`HttpLimits`:

- the request head (request line and headers) is capped at ``max_header_bytes``, counted as
  bytes arrive, before the parser buffers them, and at ``max_headers`` fields: 431;
- the head must arrive within ``header_timeout_s`` of the connection's start (on a kept-alive
  connection, of the request's first byte): 408, or a plain close if nothing came at all;
- the body must arrive within ``body_timeout_s`` of the head, plus one second per
  ``min_body_rate`` bytes received, as Apache's mod_reqtimeout counts (nginx's
  ``client_body_timeout`` bounds only the gap between two reads, which a client trickling a
  byte at a time never reaches): 408. Time in which the server is not reading -- the
  application has not asked for more of the body yet -- does not count;
- at most ``max_connections`` connections are served at once; one more is answered 503 with
  ``Retry-After`` when its request arrives (or closed after a second), and never served.

An error answer ends the connection the way nginx's lingering close does: the answer, then
our side of the stream shut, then what the client still sends read and dropped for a moment
(up to a budget: then reading stops, so a client that never stops sending costs nothing),
so that closing on unread data does not reset the connection before the client has read why.
:func:`protocol_class` builds the class uvicorn makes each connection from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = [
    "LIMBO_MAX",
    "ConnectionLimits",
    "GuardedHttpToolsProtocol",
    "HttpLimits",
    "make_room_for",
    "protocol_class",
]

log = logging.getLogger(__name__)

LINGER_S = 2.0  # seconds to drop what a client still sends after an error answer
LINGER_BYTES = 65536  # bytes dropped at most; then reading stops until the close
OVER_CAP_WAIT_S = 1.0  # seconds a connection over the cap may take to send its request
LIMBO_MAX = 1024  # connections in limbo (see _Open) at most
# The request line's fixed parts ("POST ", " HTTP/1.1\r\n") and the blank line ending a head,
# added to the URL and the fields when a completed head is measured.
_HEAD_OVERHEAD = 24


class HttpLimits(Protocol):
    """What a client may send before the application sees its request, and for how long."""

    @property
    def max_header_bytes(self) -> int: ...  # request line and headers of one request
    @property
    def max_headers(self) -> int: ...  # header fields in one request
    @property
    def header_timeout_s(self) -> float: ...  # connection start (or first byte) to head end
    @property
    def body_timeout_s(self) -> float: ...  # head end to body end, plus the rate's share
    @property
    def min_body_rate(self) -> float: ...  # bytes per second a body earns an extra second by
    @property
    def max_connections(self) -> int | None: ...  # served at once; None: no cap


@dataclass(frozen=True)
class ConnectionLimits:
    """:class:`HttpLimits` for a server without settings of its own for them (the fleet
    service); the defaults are ``edgeinfer serve``'s."""

    max_header_bytes: int = 16384
    max_headers: int = 100
    header_timeout_s: float = 60.0
    body_timeout_s: float = 60.0
    min_body_rate: float = 1024.0
    max_connections: int | None = 1000

    def __post_init__(self) -> None:
        if self.max_header_bytes < 256 or self.max_headers < 1:
            raise ValueError(
                f"max_header_bytes {self.max_header_bytes} and max_headers {self.max_headers}: "
                "expected at least 256 bytes and 1 field"
            )
        for name in ("header_timeout_s", "body_timeout_s", "min_body_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)} must be > 0")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections {self.max_connections} must be >= 1 (None: no cap)")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Open:
    """One server's connection counts, shared by its connections: those being served, and
    those in limbo -- over the cap and waiting to be told so, or lingering after an error
    answer. Limbo is not served, so it does not count against the cap, but it is bounded
    too (LIMBO_MAX): past that, such a connection is closed at once."""

    def __init__(self) -> None:
        self.count = 0
        self.limbo = 0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, head and body deadlines and a
    connection cap (see the module docstring). Use :func:`protocol_class` to get one bound
    to a server's settings."""

    limits: ClassVar[HttpLimits]
    open_connections: ClassVar[_Open]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = False  # counted in open_connections.count
        self._in_limbo = False  # counted in open_connections.limbo
        self._ending = False  # an error answer was written; dropping what still comes
        self._dropped = 0  # bytes dropped since
        self._head_bytes = 0  # bytes of the current head received so far (an upper bound)
        self._reading_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0  # loop time

    # -------------------------------------------------------------- connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if cap is not None and self.open_connections.count >= cap:
            if self._enter_limbo():
                self._head_timer = self.loop.call_later(OVER_CAP_WAIT_S, self._close)
            return
        self._served = True
        self.open_connections.count += 1
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_service()
        if self._in_limbo:
            self._in_limbo = False
            self.open_connections.limbo -= 1
        self._cancel_timers()
        super().connection_lost(exc)

    def _leave_service(self) -> None:
        if self._served:
            self._served = False
            self.open_connections.count -= 1

    def _enter_limbo(self) -> bool:
        """Count this connection in limbo; False (and closed) if limbo is full."""
        if not self._in_limbo:
            if self.open_connections.limbo >= LIMBO_MAX:
                self._close()
                return False
            self._in_limbo = True
            self.open_connections.limbo += 1
        return True

    def shutdown(self) -> None:
        if self._in_limbo:
            self._close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._ending:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:  # a client that never stops sending
                self.transport.pause_reading()
            return
        if self._in_limbo:  # over the cap
            cap = self.limits.max_connections
            self._answer(
                503,
                f"the server is serving {cap} connections, its limit; retry in a moment",
                retry_after_s=1,
            )
            return
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._answer(exc.__context__.status, str(exc.__context__))
            else:
                self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        limit = self.limits.max_header_bytes
        if self._reading_head and self._head_bytes > limit:
            self._answer(431, f"request line and headers exceed the limit of {limit} bytes")
        elif self._reading_head:
            if self._head_bytes and self._head_timer is None:
                self._arm_head_timer()
        elif self._body_timer is None and self.transport is not None:
            self._arm_body_timer()

    def _invalid(self) -> None:
        self.logger.warning("Invalid HTTP request received.")
        self._answer(400, "invalid HTTP/1.1 request")

    # -------------------------------------------------------------- parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            raise _Refused(431, f"more than {self.limits.max_headers} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        size = _HEAD_OVERHEAD + len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        limit = self.limits.max_header_bytes
        if size > limit:
            raise _Refused(431, f"request line and headers exceed the limit of {limit} bytes")
        self._reading_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_deadline += len(body) / self.limits.min_body_rate
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # -------------------------------------------------------------- deadlines
    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        self._body_deadline = self.loop.time() + self.limits.body_timeout_s
        self._body_timer = self.loop.call_at(self._body_deadline, self._body_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._ending:
            return
        if self._responding():  # the client waits for an answer still being made
            self._arm_head_timer()
        elif self._head_bytes == 0:
            self._close()  # nothing was asked: nothing to answer
        else:
            timeout = self.limits.header_timeout_s
            self._answer(408, f"request line and headers not received within {timeout:g} s")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._ending or self._reading_head:
            return
        now = self.loop.time()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            self._close()  # answered already; the rest of the body is not coming
            return
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # the server is not reading (yet): the client cannot be late
            self._body_deadline = now + self.limits.body_timeout_s
        elif cycle is not None and cycle.response_started and not cycle.response_complete:
            self._body_deadline = now + self.limits.body_timeout_s
        if now < self._body_deadline:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_timed_out)
            return
        timeout = self.limits.body_timeout_s
        rate = self.limits.min_body_rate
        self._answer(
            408,
            f"request body not received in time ({timeout:g} s, plus one second per "
            f"{rate:g} bytes received)",
        )

    # -------------------------------------------------------------- ending a connection
    def _answer(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        """Answer ``status`` with ``{"error": message}`` (unless an answer is already on its
        way, which the client would read as this one), then end the connection."""
        log.info("%s: %d %s", self.client, status, message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # whatever the application still does for this request goes nowhere
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self._close()
                return
        self.pipeline.clear()
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after_s is not None:
            head.append(b"retry-after: %d\r\n" % retry_after_s)
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self._linger()

    def _linger(self) -> None:
        self._ending = True
        self._cancel_timers()
        self._leave_service()  # no longer served: the cap makes room for a new client
        # what the parser kept of the refused request (a head can be a quarter MiB) goes now,
        # not when the client closes
        self.parser = httptools.HttpRequestParser(self)
        self.url, self.headers = b"", []
        if not self.transport.can_write_eof() or not self._enter_limbo():
            self._close()
            return
        self.flow.resume_reading()
        self.transport.write_eof()  # the answer, then our side of the stream ends
        self._head_timer = self.loop.call_later(LINGER_S, self._close)

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def protocol_class(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for one server: uvicorn makes one per connection from it
    (``uvicorn.Config(http=protocol_class(limits))``)."""
    return type(
        "EdgeInferHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "open_connections": _Open()},
    )


def make_room_for(connections: int) -> str | None:
    """Raise the process's open-file limit so that ``connections`` sockets fit (each
    connection is a file descriptor), as far as the hard limit allows; a warning to show
    when it cannot."""
    if sys.platform == "win32":
        return None
    import resource

    # connections refused or being closed (LIMBO_MAX), then models, gRPC, logs, listeners
    needed = connections + LIMBO_MAX + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        return (
            f"warning: the open-file limit ({target}) leaves room for fewer connections than "
            f"--max-connections {connections}; raise `ulimit -n` or lower the cap"
        )
    return None
