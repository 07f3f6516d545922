"""``RemoteGenerator``: a language model on an edge server, streamed token by token.

It speaks the Open Inference Protocol's generate extension as ``edgeinfer serve`` (and
Triton) answer it: ``POST /v2/models/{model}/generate_stream`` with the prompt as token ids
(``input_ids``, an edgeinfer field, so the device and the server agree on every token
index), answered by server-sent events, one per decoded piece, each with the ids of its
tokens (``token_ids``); the last carries ``finish_reason``::

    remote = RemoteGenerator("http://edge:8000", "smollm2")
    for event in remote.stream(ids, GenerateOptions(max_tokens=32)):
        print(event.text, event.token_ids)

The stream is watched as it flows: the first event must come within ``first_s`` (the
server's prompt pass included) and each next one within ``gap_s`` of the last, through
the same per-read deadlines that bound every HTTP call of the offloader
(:mod:`.http_transport`). A stall, a broken connection, an ``{"error": ...}`` event or a
stream that ends without its last event is a :class:`~edgeinfer.offload.errors.RemoteError`
raised where it happened, after the events that did arrive: the caller keeps those and
continues from them (:mod:`.generation`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from edgeinfer.errors import InputError
from edgeinfer.generate.options import GenerateOptions
from edgeinfer.offload.errors import (
    RemoteError,
    RemoteProtocolError,
    RemoteServerError,
    RemoteTimeout,
    RemoteUnavailable,
)
from edgeinfer.offload.http_transport import (
    _deadline_transport,
    _error_message,
    _until,
    map_httpx_error,
)
from edgeinfer.offload.transport import status_error

__all__ = ["RemoteGenerator", "StreamEvent"]

_MAX_EVENT = 1 << 20  # bytes: the longest event line accepted (a piece is a few tokens)
_MAX_ERROR_BODY = 1 << 16  # bytes of an error answer read


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One decoded piece of a remote generation."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None  # set on the last event only
    at: float = 0.0  # perf_counter() time it arrived


def _parameters(opts: GenerateOptions) -> dict[str, object]:
    params: dict[str, object] = {
        "max_tokens": opts.max_tokens,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "top_k": opts.top_k,
    }
    if opts.stop:
        params["stop"] = list(opts.stop)
    if opts.seed is not None:
        params["seed"] = opts.seed
    return params


def _event(line: bytes, url: str, at: float) -> StreamEvent | None:
    """The event of one ``data:`` line (``None`` for comments and other fields)."""
    if not line.startswith(b"data:"):
        return None  # ":" comments (keep-alives), "event:", "id:", "retry:"
    try:
        doc = json.loads(line[5:])
    except ValueError:
        raise RemoteProtocolError(f"a stream event is not JSON: {line[:80]!r}", url=url) from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("a stream event is not a JSON object", url=url)
    if "error" in doc:
        raise RemoteServerError(f"the stream broke off: {str(doc['error'])[:300]}", url=url)
    text, ids, finish = (
        doc.get("text_output", ""),
        doc.get("token_ids", []),
        doc.get("finish_reason"),
    )
    if (
        not isinstance(text, str)
        or not isinstance(ids, list)
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)
        or not (finish is None or isinstance(finish, str))
    ):
        raise RemoteProtocolError(
            "a stream event is not {text_output: str, token_ids: [int], finish_reason?: str}",
            url=url,
        )
    return StreamEvent(text, tuple(ids), finish, at)


class RemoteGenerator:
    """Streams generations of one model on one server (thread-safe; keeps connections)."""

    def __init__(
        self,
        url: str,
        model: str,
        version: str | int | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not model:
            raise InputError("a remote generative model needs a model name")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"url {url!r}: expected an http:// or https:// server address")
        self.url = url.rstrip("/")
        self.name = model
        self.version = None if version is None else str(version)
        base = {"Accept": "text/event-stream", **(headers or {})}
        if token:
            base["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.url, headers=base, timeout=10.0, transport=_deadline_transport()
        )

    def __repr__(self) -> str:
        return f"RemoteGenerator({self.url!r}, {self.name!r})"

    @property
    def path(self) -> str:
        path = f"/v2/models/{quote(self.name, safe='')}"
        if self.version:
            path += f"/versions/{quote(self.version, safe='')}"
        return path + "/generate_stream"

    def stream(
        self,
        input_ids: Sequence[int],
        opts: GenerateOptions,
        *,
        first_s: float = 5.0,  # seconds until the first event (the server's prompt pass)
        gap_s: float = 1.0,  # seconds at most between two events after the first
    ) -> Generator[StreamEvent, None, None]:
        """The events of one generation, as they arrive; raises :class:`RemoteError` where
        the stream fails (closing the iterator early closes the connection)."""
        body = {"input_ids": [int(t) for t in input_ids], "parameters": _parameters(opts)}
        deadline = time.perf_counter() + first_s
        timeout = httpx.Timeout(max(first_s, gap_s))
        try:
            with _until(deadline):
                request = self._client.build_request("POST", self.path, json=body, timeout=timeout)
                response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._mapped(exc, first_s) from exc
        try:
            if response.status_code != 200:
                with _until(deadline):
                    answer = self._error_body(response)
                raise status_error(response.status_code, _error_message(answer), self.url)
            yield from self._events(response, deadline, first_s, gap_s)
        finally:
            response.close()

    def _events(
        self, response: httpx.Response, deadline: float, first_s: float, gap_s: float
    ) -> Iterator[StreamEvent]:
        chunks = response.iter_raw()
        buffer = b""
        wait = first_s
        while True:
            try:
                with _until(deadline):
                    chunk = next(chunks, None)
            except httpx.HTTPError as exc:
                raise self._mapped(exc, wait) from exc
            now = time.perf_counter()
            if chunk is None:
                raise RemoteUnavailable(
                    "the stream ended before its last event (connection closed)", url=self.url
                )
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                event = _event(line.rstrip(b"\r"), self.url, now)
                if event is None:
                    continue
                deadline, wait = now + gap_s, gap_s  # the next event is due within the gap
                yield event
                if event.finish_reason is not None:
                    return
            if len(buffer) > _MAX_EVENT:
                raise RemoteProtocolError(
                    f"a stream event is longer than {_MAX_EVENT} bytes", url=self.url
                )

    def _error_body(self, response: httpx.Response) -> bytes:
        body = b""
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > _MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            pass  # the status says enough (a body cut short, or too slow to wait for)
        return body[:_MAX_ERROR_BODY]

    def _mapped(self, exc: httpx.HTTPError, waited: float) -> RemoteError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return RemoteTimeout(f"no token for {waited:.3g} s: the stream stalled", url=self.url)
        return map_httpx_error(exc, self.url)

    def close(self) -> None:
        self._client.close()
