"""``GenerativeModel``: a language model on this device, over onnxruntime-genai.

onnxruntime-genai runs the decoding loop (KV cache, greedy search and sampling) on the
ONNX model its builder wrote; this module adds what edgeinfer promises around it: checked
parameters and prompts (:mod:`edgeinfer.generate.options`), the bundle's verified files,
chat messages through the model's own template, stop strings, streaming that detokenizes
as tokens come (``og.TokenizerStream``) and stops generating when the caller closes the
stream, and the timings every generation reports.

>>> model = edgeinfer.load("bundles/smollm2-int4")                 # doctest: +SKIP
>>> model.generate("The capital of France is", max_tokens=8).text  # doctest: +SKIP
>>> for piece in model.stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
...     print(piece, end="")
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import BackendError, BundleError, InputError, MissingDependencyError
from edgeinfer.generate._stops import StopFinder
from edgeinfer.generate.options import GenerateOptions, Generation, check_messages
from edgeinfer.runtime.bundle import Bundle
from edgeinfer.tensors import TensorSpec

__all__ = [
    "BackendInfo",
    "Follower",
    "GenerativeModel",
    "TextStream",
    "load",
    "open_generative",
]

# The token-level signature of a generative model (what its golden sample feeds).
TOKEN_INPUTS = (TensorSpec("input_ids", "int64", ("prompt",)),)
TOKEN_OUTPUTS = (TensorSpec("token_ids", "int64", ("generated",)),)


@dataclass(frozen=True)
class BackendInfo:
    """What runs a generative model, for tools that name a model's backend."""

    name: str


# A text, a chat of {"role", "content"}, or token ids (continued exactly: a server's client
# sends them to go on from where another copy of the model stopped).
Prompt = str | Sequence[Mapping[str, str]] | Sequence[int]


def _og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise MissingDependencyError(
            "onnxruntime-genai", "generate", "run generative models"
        ) from exc
    return og


class GenerativeModel:
    """A loaded language model: ``generate`` a :class:`Generation`, or ``stream`` text.

    Safe to share between threads: each call runs its own generator (its own KV cache)
    over the one loaded model.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bundle: Bundle | None = None,
        threads: int | None = None,
    ) -> None:
        og = _og()
        self.path = Path(path)
        self.bundle = bundle
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads {threads!r} is invalid; expected an integer >= 1")
        try:
            config = og.Config(str(self.path))
            config.clear_providers()  # the CPU; other providers come with their own builds
            if threads is not None:
                options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
                config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
        except RuntimeError as exc:
            raise BackendError(
                f"{self.path}: onnxruntime-genai cannot load the model: {exc}"
            ) from exc
        genai = json.loads((self.path / "genai_config.json").read_text(encoding="utf-8"))["model"]
        self.context_length: int = int(genai["context_length"])
        self.vocab_size: int = int(genai["vocab_size"])
        self.eos_token_ids: frozenset[int] = frozenset(
            int(t) for t in self._tokenizer.eos_token_ids
        )
        spec = bundle.manifest.generative if bundle is not None else None
        if spec is not None and (spec.context_length, spec.vocab_size) != (
            self.context_length,
            self.vocab_size,
        ):
            # A manifest edited by hand would have callers plan for a context the model lacks.
            raise BundleError(
                f"{self.path}: the manifest says context {spec.context_length}, vocabulary "
                f"{spec.vocab_size}; genai_config.json says {self.context_length}, "
                f"{self.vocab_size}"
            )
        self.chat_template: str | None = spec.chat_template if spec else _chat_template(self.path)
        self._closed = False
        self._lock = threading.Lock()  # the tokenizer's encode/decode, not the generation

    def __repr__(self) -> str:
        return (
            f"GenerativeModel({self.name!r}, context_length={self.context_length}, "
            f"vocab_size={self.vocab_size})"
        )

    def __enter__(self) -> GenerativeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.bundle.name if self.bundle is not None else self.path.name

    @property
    def version(self) -> int | None:
        return None if self.bundle is None else self.bundle.version

    # What tools written for a predictive Model read (inspect, bench, run, the gate): the
    # token-level signature of the golden sample, run by predict.
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.bundle.manifest.inputs if self.bundle is not None else TOKEN_INPUTS

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.bundle.manifest.outputs if self.bundle is not None else TOKEN_OUTPUTS

    @property
    def providers(self) -> tuple[str, ...]:
        return ("CPUExecutionProvider",)

    @property
    def backend(self) -> BackendInfo:
        return BackendInfo("onnxruntime-genai")

    # ---------------------------------------------------------------- tokens
    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (no chat template applied)."""
        if not isinstance(text, str):
            raise InputError(
                f"prompt must be a string or a list of messages, got {type(text).__name__}"
            )
        with self._lock:
            return [int(t) for t in self._tokenizer.encode(text)]

    def decode(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids if int(t) not in self.eos_token_ids]
        with self._lock:
            return str(self._tokenizer.decode(np.asarray(ids, dtype=np.int32)))

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text of a chat, through the model's chat template."""
        chat = check_messages(messages)
        if not self.chat_template:
            raise InputError(
                f"model {self.name!r} has no chat template; pass a prompt string instead of "
                "messages"
            )
        with self._lock:
            try:
                return str(
                    self._tokenizer.apply_chat_template(
                        json.dumps(chat),
                        template_str=self.chat_template,
                        add_generation_prompt=True,
                    )
                )
            except RuntimeError as exc:
                raise InputError(f"the chat template cannot render these messages: {exc}") from None

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt string, a chat or token ids; refuses empty prompts, ids
        outside the vocabulary and prompts too long."""
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("prompt is empty; expected some text to continue")
            ids = self.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and all(_is_id(t) for t in prompt):
            ids = [int(t) for t in prompt]  # type: ignore[call-overload]
            if not all(0 <= t < self.vocab_size for t in ids):
                raise InputError(
                    f"prompt token ids must be in [0, {self.vocab_size}) (the model's vocabulary)"
                )
        elif isinstance(prompt, (list, tuple)):
            ids = self.encode(self.render_chat(prompt))  # type: ignore[arg-type]
        else:
            raise InputError(
                f"prompt must be a string or a list of messages, got {type(prompt).__name__}"
            )
        if not ids:
            raise InputError("prompt encodes to no tokens; expected some text to continue")
        if len(ids) >= self.context_length:
            raise InputError(
                f"prompt is {len(ids)} tokens; model {self.name!r} has a context of "
                f"{self.context_length} tokens (prompt and continuation together): shorten it"
            )
        return ids

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        prompt: Prompt,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Continue ``prompt`` (a string, or a chat: a list of ``{"role", "content"}``).

        ``temperature=0`` is greedy; otherwise tokens are sampled (``top_p``, ``top_k``;
        ``seed`` makes it repeatable). The text ends at the end-of-sequence token, before
        the first ``stop`` string, after ``max_tokens``, or when the context is full
        (``Generation.stop_reason`` says which).
        """
        s = self.stream(prompt, max_tokens, temperature, top_p, top_k, stop, seed)
        for _ in s:
            pass
        assert s.result is not None  # a stream run to its end always has a result
        return s.result

    def stream(
        self,
        prompt: Prompt,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> TextStream:
        """Like :meth:`generate`, but an iterator of text pieces as the tokens come.

        Parameters and the prompt are checked here, before the first piece. Closing the
        stream (``close()``, or leaving a ``for`` loop over a ``with`` block) stops the
        generation; ``.result`` holds the :class:`Generation` once the stream ended.
        """
        if self._closed:
            raise BackendError(f"model {self.name!r} is closed")
        start = time.perf_counter()
        opts = GenerateOptions.of(max_tokens, temperature, top_p, top_k, stop, seed)
        ids = self.prompt_ids(prompt)
        return TextStream(self, ids, opts, start)

    def resume(
        self,
        prompt_ids: Sequence[int],
        generated: Sequence[int],
        opts: GenerateOptions,
        *,
        shown: str = "",
        exact: bool = True,
    ) -> TextStream:
        """Continue a generation that another copy of this model began (an edge server).

        ``prompt_ids``: the prompt's tokens; ``generated``: the tokens generated so far;
        ``shown``: the text the caller has already been given for them. The stream yields
        only what comes after ``shown``; its ``.result`` is the whole generation, the
        tokens in ``generated`` included, as if it had run here from the start.

        ``exact=True`` feeds the generated tokens one at a time, as decoding computed
        them, so greedy decoding gives the same tokens as an uninterrupted run (it costs
        one decoding step per token); ``exact=False`` feeds them in one pass with the
        prompt (faster; a quantized model's batched kernels can round differently, and
        greedy decoding may then drift apart at a near tie).
        """
        if self._closed:
            raise BackendError(f"model {self.name!r} is closed")
        ids = self._checked_ids(prompt_ids)
        done = [int(t) for t in generated]
        if not all(0 <= t < self.vocab_size for t in done):
            raise InputError(f"generated token ids must be ids in [0, {self.vocab_size})")
        return TextStream(self, ids, opts, time.perf_counter(), done=done, shown=shown, exact=exact)

    def _search_options(self, opts: GenerateOptions, prompt_len: int) -> dict[str, Any]:
        max_length = min(prompt_len + opts.max_tokens, self.context_length)
        search: dict[str, Any] = {"max_length": max_length, "min_length": 0, "num_beams": 1}
        if opts.greedy:
            search["do_sample"] = False
        else:
            search.update(
                do_sample=True,
                temperature=float(opts.temperature),
                top_p=float(opts.top_p),
                top_k=min(opts.top_k, self.vocab_size) or self.vocab_size,  # k > V: no limit
            )
            if opts.seed is not None:
                search["random_seed"] = opts.seed
        return search

    def _generator(
        self, ids: list[int], opts: GenerateOptions, done: Sequence[int] = (), exact: bool = True
    ) -> Any:
        """A generator fed the prompt ``ids`` and the tokens ``done`` already generated
        (which count against ``opts.max_tokens``; see :meth:`resume` for ``exact``)."""
        og = _og()
        try:
            params = og.GeneratorParams(self._model)
            params.set_search_options(**self._search_options(opts, len(ids)))
            gen = og.Generator(self._model, params)
            if not exact:
                gen.append_tokens(np.asarray([*ids, *done], dtype=np.int32))
            else:
                gen.append_tokens(np.asarray(ids, dtype=np.int32))
                for token in done:
                    # One at a time, as they were generated: a batched pass over them can
                    # round differently (int4 kernels) and greedy decoding drift apart.
                    gen.append_tokens(np.asarray([token], dtype=np.int32))
        except RuntimeError as exc:
            raise BackendError(f"model {self.name!r}: generation failed to start: {exc}") from exc
        return gen

    # ---------------------------------------------------------------- golden sample
    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Greedy continuations of token-id prompts: what a golden sample checks.

        ``inputs`` maps a name to a prompt's token ids; each is continued greedily by the
        manifest's ``golden_max_tokens`` (16 without a bundle) and returned as int64 ids.
        """
        spec = self.bundle.manifest.generative if self.bundle is not None else None
        n = spec.golden_max_tokens if spec is not None and spec.golden_max_tokens else 16
        return self.predict_n(inputs, n)

    def predict_n(self, inputs: Mapping[str, Any], max_tokens: int) -> dict[str, np.ndarray]:
        """:meth:`predict` with ``max_tokens`` greedy tokens per prompt."""
        return {
            name: self.continue_ids(ids.tolist(), max_tokens)
            for name, ids in self.validate(inputs).items()
        }

    def validate(self, inputs: Any) -> dict[str, np.ndarray]:
        """Token-id prompts as :meth:`predict` takes them: a name -> 1-D ids mapping."""
        if not isinstance(inputs, Mapping) or not inputs:
            raise InputError(
                "inputs must map names to token-id prompts (1-D integer arrays), got "
                f"{type(inputs).__name__}"
            )
        out = {}
        for name, ids in inputs.items():
            arr = np.asarray(ids)
            if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.size == 0:
                raise InputError(
                    f"input {name!r}: expected 1-D integer token ids, got {arr.dtype} "
                    f"{list(arr.shape)}"
                )
            out[str(name)] = arr.astype(np.int64)
        return out

    def sample_inputs(
        self,
        batch: int = 1,
        dims: Mapping[str, int] | None = None,
        seed: int = 0,
        *,
        strict: bool = False,
    ) -> dict[str, np.ndarray]:
        """One fixed English prompt's token ids (``predict`` continues it): for benchmarks."""
        return {"input_ids": np.asarray(self.encode("The capital of France is"), np.int64)}

    def continue_ids(self, ids: Sequence[int], max_tokens: int) -> np.ndarray:
        """The greedy continuation of token ids (no text involved), as int64 ids."""
        prompt = self._checked_ids(ids)
        gen = self._generator(prompt, GenerateOptions(max_tokens=max_tokens))
        out: list[int] = []
        try:
            while not gen.is_done():
                gen.generate_next_token()
                out.append(int(gen.get_next_tokens()[0]))
        except RuntimeError as exc:
            raise BackendError(f"model {self.name!r}: generation failed: {exc}") from exc
        finally:
            del gen
        return np.asarray(out, dtype=np.int64)

    def follow(self, prompt_ids: Sequence[int], opts: GenerateOptions) -> Follower:
        """A generation kept in step with tokens another copy of this model generates
        (an edge server's stream): :meth:`Follower.feed` them as they arrive, and
        :meth:`Follower.resume` continues here at once, the same tokens as an
        uninterrupted run, without the replay :meth:`resume` does. It costs this device
        one decoding step per token fed."""
        if self._closed:
            raise BackendError(f"model {self.name!r} is closed")
        return Follower(self, self._checked_ids(prompt_ids), opts)

    def _checked_ids(self, ids: Sequence[int]) -> list[int]:
        prompt = [int(t) for t in ids]
        if not prompt or not all(0 <= t < self.vocab_size for t in prompt):
            raise InputError(f"token ids must be a non-empty list of ids in [0, {self.vocab_size})")
        if len(prompt) >= self.context_length:
            raise InputError(
                f"prompt is {len(prompt)} tokens; the context is {self.context_length}"
            )
        return prompt

    def warmup(self) -> None:
        """Generate a couple of tokens so the first real call does not pay for setup."""
        self.continue_ids(self.encode("Hello") or [0], 2)

    def close(self) -> None:
        self._closed = True


class Follower:
    """A generator fed, one at a time, the tokens generated elsewhere (see
    :meth:`GenerativeModel.follow`). One thread feeds it; :meth:`resume` hands it on."""

    def __init__(self, model: GenerativeModel, ids: list[int], opts: GenerateOptions) -> None:
        self.model, self.ids, self.opts = model, ids, opts
        self.fed: list[int] = []
        self._gen: Any = None
        # feeding stops one token short of where the generation would end
        self._room = min(len(ids) + opts.max_tokens, model.context_length) - len(ids) - 1

    def feed(self, token: int) -> None:
        """Run the model over one more token (the prompt pass comes with the first)."""
        if len(self.fed) >= self._room or (self.fed and self.fed[-1] in self.model.eos_token_ids):
            return  # the generation ends here: resume needs no generator
        if self._gen is None:
            self._gen = self.model._generator(self.ids, self.opts)
        try:
            self._gen.append_tokens(np.asarray([int(token)], dtype=np.int32))
        except RuntimeError as exc:
            raise BackendError(f"model {self.model.name!r}: generation failed: {exc}") from exc
        self.fed.append(int(token))

    def resume(self, generated: Sequence[int], *, shown: str = "") -> TextStream:
        """Go on after ``generated`` (the tokens fed so far and any not fed yet)."""
        done = [int(t) for t in generated]
        if done[: len(self.fed)] != self.fed:
            raise InputError("generated tokens must begin with the tokens fed to the follower")
        for token in done[len(self.fed) :]:
            self.feed(token)
        return TextStream(
            self.model, self.ids, self.opts, time.perf_counter(), done=done, shown=shown,
            follower=self,
        )  # fmt: skip

    def _take(self) -> Any:
        gen, self._gen = self._gen, None
        return gen if gen is not None else self.model._generator(self.ids, self.opts, self.fed)

    def close(self) -> None:
        self._gen = None


class TextStream(Iterator[str]):
    """Text pieces of one generation as they come; ``.result`` once it ended."""

    def __init__(
        self,
        model: GenerativeModel,
        ids: list[int],
        opts: GenerateOptions,
        start: float,
        *,
        done: Sequence[int] = (),
        shown: str = "",
        exact: bool = True,
        follower: Follower | None = None,
    ) -> None:
        self.model = model
        self.prompt_tokens = len(ids)
        self.result: Generation | None = None
        # The tokens generated so far, growing as they come: the ids behind a piece are those
        # added since the previous piece (a piece held back for a stop string comes later).
        self.token_ids: list[int] = []
        self._created = time.perf_counter()
        self._exact = exact  # how done tokens are fed (see GenerativeModel.resume)
        self._follower = follower  # a generator already fed the done tokens, to go on with
        self._it = self._run(ids, opts, start, list(done), len(shown))

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop generating (the generator and its KV cache are released)."""
        self._it.close()

    def _run(
        self, ids: list[int], opts: GenerateOptions, start: float, done: list[int], skip: int
    ) -> Generator[str, None, None]:
        """The generation; ``done``: tokens generated elsewhere already (see ``resume``),
        replayed through the detokenizer and stop strings without running the model;
        ``skip``: characters of text the caller has already seen."""
        model = self.model
        # Timings count the call and the generation, not a wait before the first next().
        start += time.perf_counter() - self._created
        detok = model._tokenizer.create_stream()
        stops = StopFinder(opts.stop)
        tokens = self.token_ids
        text: list[str] = []
        first = last = 0.0
        reason = "cancelled"
        gen = None

        def shown(piece: str) -> str:
            """Record ``piece``; the part of it the caller has not seen yet."""
            nonlocal skip
            text.append(piece)
            seen, skip = min(skip, len(piece)), max(skip - len(piece), 0)
            return piece[seen:]

        try:
            for token in done:
                tokens.append(token)
                if token not in model.eos_token_ids:
                    new = shown(stops.feed(detok.decode(token)))
                    if new:
                        yield new
            if stops.stopped:
                reason = "stop"
            elif tokens and (
                tokens[-1] in model.eos_token_ids
                or len(tokens) >= opts.max_tokens
                or len(ids) + len(tokens) >= model.context_length
            ):
                reason = _ended(tokens, model.eos_token_ids, opts, len(ids))
            else:
                follower, self._follower = self._follower, None
                if follower is not None:  # already fed the done tokens: no replay
                    gen = follower._take()
                else:
                    gen = model._generator(ids, opts, done, self._exact)
            while gen is not None:
                if gen.is_done():
                    reason = _ended(tokens, model.eos_token_ids, opts, len(ids))
                    break
                try:
                    gen.generate_next_token()
                    token = int(gen.get_next_tokens()[0])
                except RuntimeError as exc:
                    raise BackendError(f"model {model.name!r}: generation failed: {exc}") from exc
                last = time.perf_counter()
                if len(tokens) == len(done):
                    first = last
                tokens.append(token)
                if token in model.eos_token_ids:
                    continue  # is_done() says so next; its text is not the caller's
                piece = shown(stops.feed(detok.decode(token)))
                if piece:
                    yield piece
                if stops.stopped:
                    reason = "stop"
                    break
            tail = shown(stops.flush())
            if tail:
                yield tail
        finally:
            del gen
            n = len(tokens) - len(done)  # generated here
            self.result = Generation(
                text="".join(text),
                token_ids=tuple(tokens),
                prompt_tokens=len(ids),
                ttft_s=(first - start) if n else 0.0,
                tokens_per_s=(n - 1) / (last - first) if n > 1 and last > first else 0.0,
                stop_reason=reason,
                total_s=time.perf_counter() - start,
            )


def _is_id(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ended(tokens: list[int], eos: frozenset[int], opts: GenerateOptions, prompt: int) -> str:
    if tokens and tokens[-1] in eos:
        return "eos"
    return "max_tokens" if len(tokens) >= opts.max_tokens else "context"


def _chat_template(path: Path) -> str | None:
    """The chat template of a model directory: ``chat_template.jinja``, else the tokenizer's."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def open_generative(
    bundle: Bundle,
    *,
    providers: str | Sequence[str] | None = "auto",
    threads: int | None = None,
    **options: Any,
) -> GenerativeModel:
    """How :func:`edgeinfer.load` opens a bundle of kind ``"generative"`` (verified already)."""
    if options:
        raise InputError(
            f"option(s) {', '.join(sorted(options))} do not apply to a generative model"
        )
    wanted = [providers] if isinstance(providers, str) else list(providers or ["auto"])
    if any(p not in {"auto", "cpu"} for p in wanted):
        raise InputError(
            f"providers {wanted!r}: generative models run on the CPU here; use 'auto' or 'cpu'"
        )
    if bundle.manifest.generative is None:  # pragma: no cover - load dispatches on the kind
        raise BundleError(f"{bundle.path}: not a generative bundle")
    return GenerativeModel(bundle.path, bundle=bundle, threads=threads)


def load(path: str | os.PathLike[str], *, threads: int | None = None) -> GenerativeModel:
    """Open a generative bundle (verified) or a bare onnxruntime-genai model directory."""
    p = Path(path)
    if p.is_dir() and (p / "genai_config.json").is_file() and not (p / "manifest.json").exists():
        return GenerativeModel(p, threads=threads)
    bundle = Bundle.open(p)
    if bundle.manifest.kind != "generative":
        raise BundleError(f"{p}: a {bundle.manifest.kind} bundle, not a generative one")
    return open_generative(bundle, threads=threads)
