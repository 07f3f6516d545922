"""OpenAI-compatible routes for generative models, so OpenAI's clients and tools work as they are.

::

    GET  /v1/models                 the generative models served
    POST /v1/completions            a prompt (a string, or token ids) continued
    POST /v1/chat/completions       messages, through the model's own chat template

With ``"stream": true`` the answer is server-sent ``data: {chunk}`` events ending in
``data: [DONE]`` (``stream_options.include_usage`` adds a last chunk with the token counts).
As OpenAI's API has it, ``temperature`` defaults to 1 (sampling; 0 is greedy) and a
completion's ``max_tokens`` to 16; a chat's runs to the end of the model's context.
``top_k`` is accepted besides OpenAI's fields, as other servers do. What this server cannot
honour is refused in one line rather than ignored: ``n`` or ``best_of`` above 1, ``echo``,
``logprobs``, penalties, tools. Errors are OpenAI's shape, ``{"error": {"message",
"type", "param", "code"}}``, with the status and ``Retry-After`` every other route gives.
The same auth (the bearer token is the client's API key), admission control and metrics as
the rest of the server apply: these are :class:`~edgeinfer.serve.generate_routes.Generations`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgeinfer.serve.errors import BadRequest, error_status, retry_after
from edgeinfer.serve.front import retry_headers
from edgeinfer.serve.generate_routes import (
    Generations,
    check_parameters,
    collect,
    parse_json,
    sse,
)
from edgeinfer.serve.generation import GenerationBatcher, GenerationJob, Piece

__all__ = ["openai_routes"]

# finish_reason as OpenAI names it
_FINISH = {"eos": "stop", "stop": "stop", "max_tokens": "length", "context": "length"}
_COMMON = ("model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream")
# fields accepted only at the value that asks for nothing this server does not do
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "best_of": (1, None),
    "echo": (False, None),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "suffix": (None, ""),
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "logit_bias": (None,),
    "tools": (None,),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False),
    "response_format": (None, {"type": "text"}),
}
_COMPLETION = {*_COMMON, "prompt", "stream_options", "user", *_NEUTRAL}
_CHAT = {*_COMMON, "messages", "max_completion_tokens", "stream_options", "user", *_NEUTRAL}


def _error(exc: BaseException) -> JSONResponse:
    status = error_status(exc)
    kind = "invalid_request_error" if status.status < 500 else "server_error"
    if status.status in (401, 403):
        kind = "authentication_error"
    elif status.status == 404:
        kind = "not_found_error"
    elif status.status == 503:
        kind = "overloaded_error"
    body = {"error": {"message": status.message, "type": kind, "param": None, "code": None}}
    retry = retry_after(exc)
    headers = None if retry is None else retry_headers(retry)
    return JSONResponse(body, status_code=status.status, headers=headers)


def _error_event(message: str) -> bytes:
    return sse({"error": {"message": message, "type": "server_error"}})


def _options(doc: Mapping[str, Any], known: set[str], what: str) -> dict[str, Any]:
    """The generation parameters of an OpenAI request (its defaults applied)."""
    unknown = sorted(set(doc) - known)
    if unknown:
        raise BadRequest(f"{what}: unsupported field(s) {unknown}")
    for name, allowed in _NEUTRAL.items():
        if name in doc and not any(doc[name] == a and type(doc[name]) is type(a) for a in allowed):
            raise BadRequest(f"{what}: {name}={doc[name]!r} is not supported; leave it out")
    if not isinstance(doc.get("stream", False), bool):
        raise BadRequest(f"{what}: stream must be true or false")
    _include_usage(doc)  # checked now, before the generation starts
    params = {k: doc[k] for k in ("temperature", "top_p", "top_k", "stop", "seed") if k in doc}
    if params.get("temperature") is None:
        params["temperature"] = 1.0  # OpenAI's default: sampling
    return check_parameters(params, what)


def _max_tokens(value: Any, default: int) -> Any:
    return default if value is None else value


def _include_usage(doc: Mapping[str, Any]) -> bool:
    opts = doc.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, Mapping) or set(opts) - {"include_usage"}:
        raise BadRequest('stream_options must be {"include_usage": true|false}')
    return opts.get("include_usage") is True


def _completion_prompt(prompt: Any) -> Any:
    """A completion's prompt: a string or token ids (or a list holding one of them)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt
    raise BadRequest("prompt must be a string or a list of token ids (one prompt per request)")


def _messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages as the model's template takes them: role and text content (content
    given as text parts is joined)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise BadRequest(f"messages[{i}] must be an object with role and content")
        unknown = sorted(set(m) - {"role", "content", "name"})
        if unknown:
            raise BadRequest(f"messages[{i}]: unsupported field(s) {unknown}")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
                raise BadRequest(f"messages[{i}]: only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        out.append({"role": m.get("role"), "content": content})
    return out


class _OpenAIRoutes:
    def __init__(self, generations: Generations) -> None:
        self.g = generations

    async def models(self, request: Request) -> Response:
        try:
            self.g.auth.check(request.headers.get("authorization"))
            await self.g.dp.start()
        except Exception as exc:
            return _error(exc)
        repo = self.g.dp.repository
        data = []
        for name in repo.names():
            try:
                loaded = repo.get(name)
            except Exception:  # not ready: not listed
                continue
            if isinstance(loaded.batcher, GenerationBatcher):
                data.append({"id": name, "object": "model", "created": 0, "owned_by": "edgeinfer"})
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._run(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._run(request, chat=True)

    async def _run(self, request: Request, chat: bool) -> Response:
        started = time.perf_counter()
        what = "chat.completions" if chat else "completions"
        name = "_unknown"
        try:
            doc, name, job, first = await self._begin(request, chat, what)
        except Exception as exc:
            self.g.observe(name, error_status(exc).status, started)
            return _error(exc)
        reply = _Reply(name, job, chat)
        if doc.get("stream") is True:
            return self.g.stream(
                job,
                first,
                reply.chunks(_include_usage(doc)),
                name,
                started,
                done=sse("[DONE]"),
                error=_error_event,
            )
        status = 200
        try:
            text, ids, reason = await collect(job, first, request)
            return JSONResponse(
                reply.whole(text, len(ids), reason),
                headers={"Server-Timing": job.server_timing()},
            )
        except Exception as exc:
            status = error_status(exc).status
            return _error(exc)
        finally:
            self.g.observe(name, status, started)

    async def _begin(
        self, request: Request, chat: bool, what: str
    ) -> tuple[dict[str, Any], str, GenerationJob, Piece]:
        self.g.auth.check(request.headers.get("authorization"))
        limit = self.g.dp.config.limits.max_body_bytes
        doc = parse_json(await self.g.read_body(request, limit, ""), what)
        name = doc.get("model")
        if not isinstance(name, str):
            raise BadRequest(f"{what}: model must be the name of a model this server serves")
        loaded, _ = await self.g.resolve(request, name)
        params = _options(doc, _CHAT if chat else _COMPLETION, what)
        if chat:
            most = doc.get("max_completion_tokens", doc.get("max_tokens"))
            context = int(getattr(loaded.model, "context_length", 0)) or 16
            params["max_tokens"] = _max_tokens(most, context)
            prompt: Any = _messages(doc.get("messages"))
        else:
            params["max_tokens"] = _max_tokens(doc.get("max_tokens"), 16)
            prompt = _completion_prompt(doc.get("prompt"))
        job, first = await self.g.open(loaded, prompt, params)
        return doc, loaded.name, job, first


class _Reply:
    """The answer objects of one completion (whole, or as stream chunks)."""

    def __init__(self, model: str, job: GenerationJob, chat: bool) -> None:
        self.model = model
        self.job = job
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = self.job.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, n: int, reason: str) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": _FINISH.get(reason, reason)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text)
        choice["logprobs"] = None
        return {**self._head(self.object), "choices": [choice], "usage": self._usage(n)}

    def chunks(self, include_usage: bool) -> Callable[[Piece], list[bytes]]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        n = 0
        first = True

        def chunk(piece: Piece) -> list[bytes]:
            nonlocal n, first
            n += len(piece.token_ids)
            out = []
            if self.chat and first:
                out.append(self._chunk(obj, {"role": "assistant", "content": ""}, None))
            first = False
            reason = None if piece.finish_reason is None else _FINISH[piece.finish_reason]
            if piece.text or reason is not None:
                body = {"content": piece.text} if piece.text else {}
                out.append(self._chunk(obj, body if self.chat else piece.text, reason))
            if reason is not None and include_usage:
                out.append(sse({**self._head(obj), "choices": [], "usage": self._usage(n)}))
            return out

        return chunk

    def _chunk(self, obj: str, content: Any, reason: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = content
        else:
            choice["text"] = content
        choice.update(logprobs=None, finish_reason=reason)
        return sse({**self._head(obj), "choices": [choice]})


def openai_routes(generations: Generations) -> list[Route]:
    """The OpenAI-compatible routes."""
    r = _OpenAIRoutes(generations)
    return [
        Route("/v1/models", r.models, methods=["GET"]),
        Route("/v1/completions", r.completions, methods=["POST"]),
        Route("/v1/chat/completions", r.chat_completions, methods=["POST"]),
    ]
