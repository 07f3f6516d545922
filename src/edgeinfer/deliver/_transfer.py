"""What every transfer of the device agent shares: its pace, its URLs, its failures in words.

A hostile or broken server can hold the agent (and its lock) for as long as it likes by
sending one byte every few seconds: no read ever times out. python-tuf's ngclient has no
slow-retrieval protection of its own, so both the metadata fetcher and the target
downloader watch each transfer with a :class:`Pace`: the cycle's deadline (a read never
waits past it) and a minimum average rate over a window, as curl's ``--speed-limit`` /
``--speed-time`` do.

URLs may carry credentials (``https://user:password@host/repo``). :func:`split_userinfo`
takes them out before any URL reaches httpx or ngclient (both log URLs) and hands them over
as HTTP basic auth; :func:`redact_url` is how such a URL appears in messages.
:func:`describe_failure` turns an httpx transport error into the few words an operator needs
("connection refused", "unknown host").
"""

from __future__ import annotations

import errno
import socket
import time
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = [
    "Pace",
    "check_http_url",
    "describe_failure",
    "disk_full",
    "redact_url",
    "scrub",
    "split_userinfo",
]


class Pace:
    """Watches one transfer against a deadline and a minimum average rate.

    ``deadline`` is a ``time.monotonic()`` value (``None``: no deadline); ``min_rate`` is in
    bytes per second averaged over each ``window`` seconds (0 turns the check off).
    """

    def __init__(
        self, deadline: float | None, min_rate: float, window: float, *, deadline_s: float = 0.0
    ) -> None:
        self.deadline = deadline
        self.deadline_s = deadline_s  # the cycle's budget, for messages
        self.min_rate = min_rate
        self.window = window
        self._mark = time.monotonic()
        self._since_mark = 0  # bytes received since _mark
        self._read_limit = 0.0  # seconds: the last read timeout handed out
        self._deadline_bound = False  # whether that timeout ends at the deadline

    def timeout(self, read_timeout: float, connect_timeout: float) -> tuple[float, float]:
        """The longest one read and the connection may wait: never past the deadline, and
        a read never past a rate window. Returns ``(read, connect)`` in seconds."""
        left = None if self.deadline is None else max(0.01, self.deadline - time.monotonic())
        read = read_timeout if self.min_rate <= 0 else min(read_timeout, self.window)
        self._deadline_bound = left is not None and left <= read
        if left is not None:
            read, connect_timeout = min(read, left), min(connect_timeout, left)
        self._read_limit = read
        return read, connect_timeout

    def problem(self, received: int) -> str | None:
        """Account for ``received`` new bytes; why the transfer must stop, or ``None``."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            return self._out_of_time()
        self._since_mark += received
        elapsed = now - self._mark
        if self.min_rate > 0 and elapsed >= self.window:
            rate = self._since_mark / elapsed
            if rate < self.min_rate:
                return (
                    f"the server sent {rate:.0f} B/s over {elapsed:.0f} s, below the minimum "
                    f"of {self.min_rate:g} B/s (--min-rate)"
                )
            self._mark, self._since_mark = now, 0
        return None

    def _out_of_time(self) -> str:
        return f"the update cycle ran out of its {self.deadline_s:g} s (--cycle-timeout)"

    def timed_out(self) -> str:
        """Why a read that timed out ends the transfer."""
        if self._deadline_bound:
            return self._out_of_time()
        return self.problem(0) or f"timed out: no data for {self._read_limit:g} s"


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``: safe to log and report."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def scrub(text: str, *urls: str | None) -> str:
    """``text`` with the credentials of any of ``urls`` replaced by ``***``."""
    for url in urls:
        if url and "@" in url:
            netloc = url.split("://", 1)[-1].split("/", 1)[0]
            if "@" in netloc:
                text = text.replace(f"{netloc.rsplit('@', 1)[0]}@", "***@")
    return text


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` and the credentials (for basic auth)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def check_http_url(url: str) -> str | None:
    """Why ``url`` cannot be a repository or report URL, or ``None`` when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{redact_url(url)!r} is not a valid URL ({exc}); expected http:// or https://"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            f"{redact_url(url)!r}: expected http:// or https:// followed by a host, "
            "e.g. https://updates.example.com/repo"
        )
    return None


def describe_failure(exc: BaseException) -> str:
    """A transport failure in a few words: "connection refused", "unknown host", ..."""
    for cause in _chain(exc):
        if isinstance(cause, socket.gaierror):
            return "unknown host (the name does not resolve)"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(cause, TimeoutError):
            return "timed out"
    text = str(exc).strip() or type(exc).__name__
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host (the name does not resolve)"
    if "Connection refused" in text:
        return "connection refused (nothing listens there)"
    return text.splitlines()[0]


def disk_full(exc: BaseException) -> OSError | None:
    """The "no space left" error behind ``exc`` (itself, its cause or context), if any."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return cause
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
