"""The Open Inference Protocol's generate extension, for generative models.

::

    POST /v2/models/M[/versions/V]/generate          one JSON answer
    POST /v2/models/M[/versions/V]/generate_stream   server-sent events, one per piece

The body: ``{"text_input": "..."}`` or ``{"input_ids": [...]}`` (a continuation: the prompt
as token ids) and ``"parameters"``: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
``stop``, ``seed``. The answer: ``model_name``, ``model_version``, ``text_output``,
``token_ids`` and ``finish_reason`` (``eos``, ``stop``, ``max_tokens`` or ``context``). A
stream sends ``data: {...}`` events with each piece's ``text_output`` and ``token_ids``; the
last carries ``finish_reason``; an error once the stream has begun is one
``data: {"error": "..."}`` event, then the end. The token ids let a client continue a
stream on its own copy of the model, token for token (ADR 0016).

Everything up to the first piece (auth, admission, the body, the parameters, the prompt,
the wait for a slot, the prompt's forward pass) happens before the answer starts, so those
errors are ordinary JSON 4xx/503 answers, and ``Server-Timing`` carries the wait for a slot
(``queue``) and the time to the first piece (``ttft``); a whole answer adds ``compute``.
:class:`Generations` is what the OpenAI-compatible routes
(:mod:`edgeinfer.serve.openai_routes`) share with these.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgeinfer.serve.auth import Auth
from edgeinfer.serve.dataplane import DataPlane
from edgeinfer.serve.errors import BadRequest, ModelNotReady, ServeError, error_status
from edgeinfer.serve.generation import GenerationBatcher, GenerationJob, Piece
from edgeinfer.serve.repository import LoadedVersion

__all__ = ["PARAMETERS", "EventStream", "Generations", "generate_routes", "sse"]

PARAMETERS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed")
_BYTES_PER_TOKEN = 256  # a prompt body never needs more per token of the model's context
IN_PLACE_CHARS = 4096  # a prompt of up to this much text is tokenized on the event loop


def _text_chars(prompt: Any) -> int:
    """How much text ``prompt`` (a string, token ids or chat messages) has to tokenize."""
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
        return sum(len(str(m.get("content", ""))) for m in prompt if isinstance(m, Mapping))
    return 0  # token ids: nothing to tokenize


def sse(data: Any) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON (``[DONE]`` as it is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


def check_parameters(params: Any, where: str = "parameters") -> dict[str, Any]:
    """Generation parameters from a request: known names, JSON types checked (ranges are
    the model's to check, in one line each)."""
    if not isinstance(params, Mapping):
        raise BadRequest(f"{where} must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise BadRequest(f"{where}: unknown {unknown}; expected some of {list(PARAMETERS)}")
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise BadRequest(f"{where}: stop must be a string or a list of strings")
    return {k: v for k, v in params.items() if v is not None}  # null: the default


def _prompt(doc: Mapping[str, Any]) -> Any:
    text, ids = doc.get("text_input"), doc.get("input_ids")
    if (text is None) == (ids is None):
        raise BadRequest("send either text_input (a string) or input_ids (token ids), not both")
    if text is not None:
        if not isinstance(text, str):
            raise BadRequest(f"text_input must be a string, got {type(text).__name__}")
        return text
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
    ):
        raise BadRequest("input_ids must be a non-empty list of integer token ids")
    return ids


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"the {what} body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the {what} body must be a JSON object, got {type(doc).__name__}")
    return doc


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer that calls ``on_close`` however it ends (finished,
    or the client gone: Starlette cancels the sending when it hears the disconnect)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[], None],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", **(headers or {})})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


BodyReader = Callable[[Request, int, str], Awaitable[bytes]]


class Generations:
    """Finding a generative model, opening a generation on it and counting the request:
    what every generation route does. ``read_body``: the app's (a body up to a limit)."""

    def __init__(self, dataplane: DataPlane, auth: Auth, read_body: BodyReader) -> None:
        self.dp = dataplane
        self.auth = auth
        self.read_body = read_body

    async def resolve(
        self, request: Request, name: str, version: str | None = None
    ) -> tuple[LoadedVersion, GenerationBatcher]:
        """Auth, then the model (generative) and its batcher; admission checked."""
        self.auth.check(request.headers.get("authorization"))
        await self.dp.start()
        loaded = self.dp.resolve(name, version)
        batcher = loaded.batcher
        if not isinstance(batcher, GenerationBatcher):
            raise BadRequest(
                f"model {loaded.name!r} is not a generative model; "
                f"POST /v2/models/{loaded.name}/infer runs it"
            )
        batcher.admit()  # overload: refuse before reading the body
        return loaded, batcher

    async def body(self, request: Request, batcher: GenerationBatcher, what: str) -> bytes:
        limit = self.dp.config.limits.max_body_bytes
        bound = 65536 + batcher.context_length * _BYTES_PER_TOKEN
        if bound < limit:
            why = f"what a prompt for a context of {batcher.context_length} tokens can need"
            return await self.read_body(request, bound, why)
        return await self.read_body(request, limit, "")

    async def open(
        self, loaded: LoadedVersion, prompt: Any, params: Mapping[str, Any]
    ) -> tuple[GenerationJob, Piece]:
        """Check ``prompt`` and ``params``, wait for a slot, and run until the first piece.

        Errors up to then are raised (the answer has not begun); the job's later pieces
        come from ``job.next()``.
        """
        batcher = loaded.batcher
        assert isinstance(batcher, GenerationBatcher)
        # parameters and prompt checked here (InputError: 400), before any wait
        if _text_chars(prompt) <= IN_PLACE_CHARS:  # tokenized in microseconds
            stream = batcher.prepare(prompt, params)
        else:
            stream = await asyncio.to_thread(batcher.prepare, prompt, params)
        job = await batcher.start(stream)
        try:
            first = await job.next()
        except BaseException:
            job.cancel()
            raise
        if first.error is not None:
            error = {400: BadRequest, 503: ModelNotReady}.get(first.error_status, ServeError)
            raise error(first.error)
        return job, first

    def observe(self, name: str, status: int, started: float) -> None:
        self.dp.metrics.observe_request(
            self.dp.metrics_label(name), "rest", status, time.perf_counter() - started
        )

    def stream(
        self,
        job: GenerationJob,
        first: Piece,
        events: Callable[[Piece], list[bytes]],
        name: str,
        started: float,
        done: bytes | None = None,
        error: Callable[[str], bytes] = lambda message: sse({"error": message}),
    ) -> EventStream:
        """The event stream of a generation from its first piece: ``events`` makes each
        piece's events; ``done`` ends the stream (after the last piece, not after an
        error, which is the one event ``error`` makes). A client that leaves cancels the
        generation."""
        ended = False

        async def produce() -> AsyncIterator[bytes]:
            nonlocal ended
            piece = first
            while True:
                if piece.error is not None:
                    ended = True
                    yield error(piece.error)
                    return
                for event in events(piece):
                    yield event
                if piece.last:
                    ended = True
                    break
                piece = await job.next()
            if done is not None:
                yield done

        def close() -> None:
            if not ended:
                job.cancel()  # the client left: stop generating
            self.observe(name, 200, started)

        headers = {"Server-Timing": job.server_timing(), "X-Accel-Buffering": "no"}
        return EventStream(produce(), close, headers)


class ClientGone(ServeError):
    status = 499  # nobody reads it; counted in the metrics as proxies log it


async def _watch(request: Request, job: GenerationJob) -> None:
    """Abandon ``job`` when its client disconnects (the body is read: what ``receive``
    gives next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.abandon()


async def collect(job: GenerationJob, first: Piece, request: Request) -> tuple[str, list[int], str]:
    """The whole generation from its first piece: text, token ids and finish reason. A
    client that disconnects meanwhile cancels it (:class:`ClientGone`)."""
    text: list[str] = []
    ids: list[int] = []
    piece = first
    watch = asyncio.ensure_future(_watch(request, job))
    try:
        while True:
            if piece.error is not None:
                error = {400: BadRequest, 499: ClientGone, 503: ModelNotReady}.get(
                    piece.error_status, ServeError
                )
                raise error(piece.error)
            text.append(piece.text)
            ids.extend(piece.token_ids)
            if piece.finish_reason is not None:
                return "".join(text), ids, piece.finish_reason
            piece = await job.next()
    except BaseException:
        job.cancel()
        raise
    finally:
        watch.cancel()


class _GenerateRoutes:
    def __init__(self, generations: Generations) -> None:
        self.g = generations

    async def _begin(self, request: Request) -> tuple[LoadedVersion, GenerationJob, Piece]:
        p = request.path_params
        loaded, batcher = await self.g.resolve(request, p["name"], p.get("version"))
        doc = parse_json(await self.g.body(request, batcher, "generate"), "generate")
        unknown = sorted(set(doc) - {"text_input", "input_ids", "parameters", "id"})
        if unknown:
            raise BadRequest(
                f"unknown field(s) {unknown}; expected text_input or input_ids, and parameters"
            )
        params = check_parameters(doc.get("parameters", {}))
        job, first = await self.g.open(loaded, _prompt(doc), params)
        return loaded, job, first

    async def generate(self, request: Request) -> Response:
        started, status = time.perf_counter(), 200
        try:
            loaded, job, first = await self._begin(request)
            text, ids, reason = await collect(job, first, request)
            answer = {
                "model_name": loaded.name,
                "model_version": str(loaded.version),
                "text_output": text,
                "token_ids": ids,
                "finish_reason": reason,
            }
            return JSONResponse(answer, headers={"Server-Timing": job.server_timing()})
        except Exception as exc:
            status = error_status(exc).status
            raise
        finally:
            self.g.observe(request.path_params["name"], status, started)

    async def generate_stream(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            loaded, job, first = await self._begin(request)
        except Exception as exc:
            self.g.observe(request.path_params["name"], error_status(exc).status, started)
            raise
        head = {"model_name": loaded.name, "model_version": str(loaded.version)}

        def events(piece: Piece) -> list[bytes]:
            event: dict[str, Any] = {
                **head,
                "text_output": piece.text,
                "token_ids": list(piece.token_ids),
            }
            if piece.finish_reason is not None:
                event["finish_reason"] = piece.finish_reason
            return [sse(event)]

        return self.g.stream(job, first, events, loaded.name, started)


def generate_routes(generations: Generations) -> list[Route]:
    """The generate extension's routes (with and without a version in the path)."""
    r = _GenerateRoutes(generations)
    routes = []
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes.append(Route(base + "/generate", r.generate, methods=["POST"]))
        routes.append(Route(base + "/generate_stream", r.generate_stream, methods=["POST"]))
    return routes
