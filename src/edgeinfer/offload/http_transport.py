"""Open Inference Protocol over HTTP/REST with httpx: JSON or binary tensor data.

``binary=True`` sends inputs and asks for outputs in the binary tensor data extension
(edgeinfer serve, Triton, KServe); ``binary=False`` uses plain JSON, which every OIP server
reads (MLServer rejects binary tensors). ``compress="zstd" | "gzip" | "deflate"`` sends
request bodies of at least :data:`~edgeinfer.protocol.coding.MIN_BYTES` compressed
(``edgeinfer serve`` reads all three, Triton gzip and deflate); answers are always accepted
compressed in the codings this process can decode, and decoded here in bounded steps
under the answer's size limit and the call's deadline (:mod:`._inflate`), so the call's
byte counts are what crossed the wire.

A call's timeout bounds the whole call. httpx applies its timeout to each socket read, so
a server that sends its headers one byte at a time could hold a call for ever; here every
read, write and connect of a call waits at most until the call's deadline
(:class:`_DeadlineBackend`, under httpx's connection pool). httpx exceptions are mapped to the
:class:`~edgeinfer.offload.errors.RemoteError` tree in :func:`map_httpx_error`, the one
place that knows them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import httpcore
import httpx

from edgeinfer.errors import InputError
from edgeinfer.offload._inflate import inflate
from edgeinfer.offload.errors import (
    RemoteConnectTimeout,
    RemoteError,
    RemoteProtocolError,
    RemoteRefused,
    RemoteTimeout,
    RemoteUnavailable,
)
from edgeinfer.offload.transport import CallStats, parse_server_timing, status_error
from edgeinfer.protocol import coding, rest
from edgeinfer.protocol.errors import ProtocolError
from edgeinfer.protocol.types import (
    BINARY_DATA_OUTPUT,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
)

__all__ = ["HttpTransport", "map_httpx_error"]

_MIN_STREAMED = 8192  # bytes: a download shorter than this is too short to time alone
MAX_RESPONSE_BYTES = 1 << 30  # bytes: the cap of an answer whose size the model cannot bound
_MAX_SMALL_ANSWER = 1 << 20  # bytes: metadata and ready answers, decoded

# Most specific first: the first class an exception is an instance of decides.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[RemoteError], str], ...] = (
    (httpx.ConnectTimeout, RemoteConnectTimeout, "could not connect in time"),
    (httpx.PoolTimeout, RemoteConnectTimeout, "no connection free in time"),
    (httpx.ReadTimeout, RemoteTimeout, "no answer in time"),
    (httpx.WriteTimeout, RemoteTimeout, "could not send the request in time"),
    (httpx.TimeoutException, RemoteTimeout, "timed out"),
    (httpx.ConnectError, RemoteUnavailable, "cannot connect"),
    (httpx.ReadError, RemoteUnavailable, "connection broken while reading"),
    (httpx.WriteError, RemoteUnavailable, "connection broken while sending"),
    (httpx.CloseError, RemoteUnavailable, "connection broken while closing"),
    (httpx.NetworkError, RemoteUnavailable, "network error"),
    (httpx.ProxyError, RemoteUnavailable, "proxy error"),
    (httpx.RemoteProtocolError, RemoteProtocolError, "invalid HTTP from the server"),
    (httpx.LocalProtocolError, RemoteProtocolError, "invalid HTTP request"),
    (httpx.UnsupportedProtocol, RemoteProtocolError, "unsupported URL scheme"),
    (httpx.ProtocolError, RemoteProtocolError, "HTTP protocol error"),
    (httpx.TransportError, RemoteUnavailable, "transport error"),
    (httpx.DecodingError, RemoteProtocolError, "cannot decode the response"),
    (httpx.TooManyRedirects, RemoteProtocolError, "too many redirects"),
    (httpx.StreamError, RemoteProtocolError, "HTTP stream misuse"),
    (httpx.InvalidURL, RemoteProtocolError, "invalid URL"),
    (httpx.CookieConflict, RemoteProtocolError, "conflicting cookies"),
    (httpx.RequestError, RemoteUnavailable, "request failed"),
    (httpx.HTTPError, RemoteUnavailable, "HTTP error"),
)


def map_httpx_error(exc: Exception, url: str) -> RemoteError:
    """The :class:`RemoteError` for an httpx exception (raise it ``from exc``)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error(exc.response.status_code, exc.response.reason_phrase, url)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and _refused(exc):
        return RemoteRefused(f"connection refused: {text}", url=url)
    if isinstance(exc, httpx.RemoteProtocolError) and "disconnected" in text.lower():
        # The connection closed before an answer: the network or server went away.
        return RemoteUnavailable(f"connection dropped: {text}", url=url)
    for cls, ours, what in _HTTPX_ERRORS:
        if isinstance(exc, cls):
            return ours(f"{what}: {text}", url=url)
    return RemoteError(f"{type(exc).__name__}: {text}", url=url)


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or (
            isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return "refused" in str(exc).lower()


def _error_message(body: bytes) -> str:
    """The ``{"error": ...}`` message of an error body, or the start of the body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(doc, dict) and "error" in doc:
        return str(doc["error"])[:500]
    return body[:200].decode("utf-8", "replace")


def _header_bytes(headers: Any) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers.raw) + 32  # + request/status line


_calls = threading.local()  # .deadline: perf_counter() time the current call must end by


@contextlib.contextmanager
def _until(deadline: float) -> Iterator[None]:
    """Every socket operation of this thread waits at most until ``deadline``."""
    before = getattr(_calls, "deadline", None)
    _calls.deadline = deadline
    try:
        yield
    finally:
        _calls.deadline = before


def _bounded(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the call's deadline; ``late`` once it passed."""
    deadline: float | None = getattr(_calls, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.perf_counter()
    if left <= 0:
        raise late("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every wait ends at the deadline of the call using it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        t = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, t))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with connections bounded by the calling call's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        t = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._backend.connect_tcp(host, port, t, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        t = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, t, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _deadline_transport() -> httpx.HTTPTransport:
    """httpx's transport with :class:`_DeadlineBackend` under its connection pool."""
    transport = httpx.HTTPTransport()
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):  # pragma: no cover - httpx changed
        raise RuntimeError("httpx's connection pool has no network backend to bound")
    pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport


class HttpTransport:
    """OIP REST client for one server (thread-safe; keeps connections alive)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        binary: bool = True,
        headers: dict[str, str] | None = None,
        compress: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.binary = binary
        if compress is not None and compress not in coding.available():
            have = ", ".join(coding.available())
            raise InputError(f"compress={compress!r}: expected None or one of {have}")
        self.compress = compress
        base = {"Accept-Encoding": ", ".join(coding.available()), **(headers or {})}
        if token:
            base["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.url, headers=base, timeout=10.0, transport=_deadline_transport()
        )

    def _path(self, model: str, version: str | None, tail: str = "") -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{quote(version, safe='')}"
        return path + tail

    @contextlib.contextmanager
    def _call(self, deadline: float, timeout: float) -> Iterator[None]:
        """One call's socket work, bounded by ``deadline``, with httpx's errors mapped."""
        try:
            with _until(deadline):
                yield
        except httpx.TimeoutException as exc:
            if time.perf_counter() >= deadline:
                raise self._late(timeout) from exc
            raise map_httpx_error(exc, self.url) from exc
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise map_httpx_error(exc, self.url) from exc

    def _receive(
        self, response: httpx.Response, limit: int, deadline: float, timeout: float, what: str
    ) -> list[tuple[float, bytes]]:
        """The raw body's chunks with their arrival times, refused past ``limit`` bytes
        (``what`` says what bounds it, for the message)."""
        chunks: list[tuple[float, bytes]] = []
        received = 0
        for chunk in response.iter_raw():
            now = time.perf_counter()
            chunks.append((now, chunk))
            received += len(chunk)
            if received > limit:
                raise RemoteProtocolError(
                    f"the answer is longer than {what} can be ({limit} bytes)", url=self.url
                )
            if now > deadline:  # a trickle of bytes must not outlive the timeout
                raise self._late(timeout)
        return chunks

    def _decode(
        self, wire: bytes, response: httpx.Response, limit: int, deadline: float, timeout: float
    ) -> bytes:
        """The body decoded per its Content-Encoding, in bounded steps (see _inflate)."""
        try:
            return inflate(
                wire, response.headers.get("content-encoding"), limit=limit, deadline=deadline
            )
        except TimeoutError as exc:
            raise self._late(timeout) from exc
        except ProtocolError as exc:
            if response.status_code != 200:  # the status says more than its body could
                raise status_error(
                    response.status_code, f"(undecodable body: {exc})", self.url
                ) from exc
            raise RemoteProtocolError(f"cannot decode the answer: {exc}", url=self.url) from exc

    def _get(self, path: str, timeout: float) -> bytes:
        """The body of a 200 answer to GET ``path`` (metadata, ready): small, so bounded."""
        deadline = time.perf_counter() + timeout
        with (
            self._call(deadline, timeout),
            self._client.stream("GET", path, timeout=timeout) as response,
        ):
            chunks = self._receive(
                response, _MAX_SMALL_ANSWER, deadline, timeout, "a metadata or ready answer"
            )
        wire = b"".join(c for _, c in chunks)
        body = self._decode(wire, response, _MAX_SMALL_ANSWER, deadline, timeout)
        if response.status_code != 200:
            raise status_error(response.status_code, _error_message(body), self.url)
        return body

    def metadata(self, model: str, version: str | None, timeout: float) -> ModelMetadata:
        body = self._get(self._path(model, version), timeout)
        try:
            return ModelMetadata.from_json(json.loads(body))
        except (ValueError, ProtocolError) as exc:
            raise RemoteProtocolError(f"bad model metadata: {exc}", url=self.url) from exc

    def ready(self, model: str, version: str | None, timeout: float) -> None:
        body = self._get(self._path(model, version, "/ready"), timeout)
        try:
            ready = json.loads(body).get("ready", True)
        except (ValueError, AttributeError):
            ready = True  # a 200 without a JSON object: the status is the answer
        if ready is False:
            raise RemoteUnavailable(f"model {model!r} is not ready", url=self.url, status=503)

    def infer(
        self,
        request: InferenceRequest,
        version: str | None,
        timeout: float,
        *,
        max_bytes: int | None = None,
    ) -> tuple[InferenceResponse, CallStats]:
        if self.binary:
            request.parameters[BINARY_DATA_OUTPUT] = True
        try:
            encoded = rest.encode_request(request, binary=self.binary)
        except ProtocolError as exc:  # e.g. bytes that are not text, in JSON
            raise RemoteProtocolError(f"cannot encode the request: {exc}", url=self.url) from exc
        path = self._path(request.model_name, version, "/infer")
        limit = MAX_RESPONSE_BYTES if max_bytes is None else max_bytes
        start = time.perf_counter()
        deadline = start + timeout
        content, headers = encoded.body, dict(encoded.headers)
        if self.compress is not None and coding.worth_encoding(len(content)):
            content = coding.encode(content, self.compress)
            headers["Content-Encoding"] = self.compress
        codec_s = time.perf_counter() - start
        with self._call(deadline, timeout):
            req = self._client.build_request(
                "POST", path, content=content, headers=headers, timeout=timeout
            )
            response = self._client.send(req, stream=True)
            try:
                what = "the model's outputs" if max_bytes is not None else "any answer"
                chunks = self._receive(response, limit, deadline, timeout, what)
            finally:
                response.close()
        wire = b"".join(c for _, c in chunks)
        t_decode = time.perf_counter()
        body = self._decode(wire, response, limit, deadline, timeout)
        codec_s += time.perf_counter() - t_decode
        if response.status_code != 200:
            raise status_error(response.status_code, _error_message(body), self.url)
        try:
            decoded = rest.decode_response(
                body, rest.parse_header_length(response.headers.get(rest.HEADER_LENGTH))
            )
        except ProtocolError as exc:
            raise RemoteProtocolError(f"bad inference response: {exc}", url=self.url) from exc
        streamed = len(wire) - len(chunks[0][1]) if chunks else 0
        first_at, end = (chunks[0][0], chunks[-1][0]) if chunks else (start, start)
        stats = CallStats(
            seconds=time.perf_counter() - start,
            up_bytes=len(content) + _header_bytes(req.headers) + len(path),
            down_bytes=response.num_bytes_downloaded + _header_bytes(response.headers),
            server_s=parse_server_timing(response.headers.get("server-timing")),
            download_s=end - first_at if streamed >= _MIN_STREAMED else None,
            streamed_bytes=streamed if streamed >= _MIN_STREAMED else 0,
            codec_s=codec_s,
        )
        return decoded, stats

    def _late(self, timeout: float) -> RemoteTimeout:
        return RemoteTimeout(
            f"no answer in time: not complete within {timeout:.3g} s", url=self.url
        )

    def close(self) -> None:
        self._client.close()
