"""The contract a remote transport implements, and what every call reports.

:class:`~edgeinfer.offload.remote.RemoteModel` speaks the Open Inference Protocol through
one :class:`Transport`: HTTP/REST (:mod:`~edgeinfer.offload.http_transport`, JSON or binary
tensors) or gRPC (:mod:`~edgeinfer.offload.grpc_transport`). A transport encodes with the
codecs in :mod:`edgeinfer.protocol`, maps its library's exceptions to the
:class:`~edgeinfer.offload.errors.RemoteError` tree at its boundary, and reports each call's
wire sizes and timings as :class:`CallStats`, which the estimators learn from.

Server-side time (queue + compute, and ``decode``/``encode`` for HTTP compression) is read
from a ``Server-Timing`` header (HTTP) or ``server-timing`` metadata (gRPC) when the server
sends one, as ``queue;dur=0.8, compute;dur=3.1`` (milliseconds, the W3C syntax). The
client's own compression time is ``codec_s``: neither is time on the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from edgeinfer.offload.errors import (
    RemoteError,
    RemoteProtocolError,
    RemoteRejected,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
)
from edgeinfer.protocol.types import InferenceRequest, InferenceResponse, ModelMetadata

__all__ = ["CallStats", "Transport", "parse_server_timing", "status_error"]


@dataclass(frozen=True)
class CallStats:
    """Sizes and timings of one answered inference call, as the client saw them."""

    seconds: float  # end to end: request sent -> response decoded
    up_bytes: int  # request on the wire (body and headers)
    down_bytes: int  # response on the wire (body and headers)
    server_s: float | None = None  # queue + compute (+ codec) time the server reported
    download_s: float | None = None  # seconds the response body streamed after its 1st read
    streamed_bytes: int = 0  # bytes that arrived in that time
    codec_s: float = 0.0  # seconds this client spent compressing and decompressing


class Transport(Protocol):
    """One way of talking the Open Inference Protocol to one server."""

    url: str

    def metadata(self, model: str, version: str | None, timeout: float) -> ModelMetadata:
        """The model's metadata (inputs, outputs, versions)."""
        ...

    def ready(self, model: str, version: str | None, timeout: float) -> None:
        """Return if the model is ready; raise a :class:`RemoteError` if not."""
        ...

    def infer(
        self,
        request: InferenceRequest,
        version: str | None,
        timeout: float,
        *,
        max_bytes: int | None = None,
    ) -> tuple[InferenceResponse, CallStats]:
        """Run one request (``request.model_name`` names the model) within ``timeout``
        seconds in all, the answer included; ``max_bytes``: the most its decoded answer may
        take (``None``: the transport's own cap)."""
        ...

    def close(self) -> None: ...


_SERVER_PARTS = ("queue", "compute", "decode", "encode")
_TIMING = re.compile(r"(?:^|,)\s*([A-Za-z0-9_.-]+)[^,]*?;\s*dur=([0-9.]+)")


def parse_server_timing(value: str | None) -> float | None:
    """Seconds of ``queue`` + ``compute`` (+ ``decode`` + ``encode``) in a ``Server-Timing``
    value (``None`` if absent).

    >>> parse_server_timing("queue;dur=1.5, compute;dur=3.5")
    0.005
    """
    if not value:
        return None
    total, seen = 0.0, False
    for name, dur in _TIMING.findall(value):
        if name.lower() in _SERVER_PARTS:
            try:
                total += float(dur) / 1e3
            except ValueError:
                continue
            seen = True
    return round(total, 9) if seen else None


def status_error(status: int, message: str, url: str) -> RemoteError:
    """The error for an HTTP status that is not success (the one status table).

    503 -> :class:`RemoteUnavailable` (retryable); 504 -> :class:`RemoteTimeout`; other
    4xx -> :class:`RemoteRejected`; other 5xx -> :class:`RemoteServerError`; anything
    else (1xx, 3xx) -> :class:`RemoteProtocolError`.
    """
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 503:
        return RemoteUnavailable(f"server unavailable, {text}", url=url, status=status)
    if status == 504:
        return RemoteTimeout(f"gateway timeout, {text}", url=url, status=status)
    if 400 <= status < 500:
        return RemoteRejected(f"request rejected, {text}", url=url, status=status)
    if 500 <= status < 600:
        return RemoteServerError(f"server error, {text}", url=url, status=status)
    return RemoteProtocolError(f"unexpected answer, {text}", url=url, status=status)
