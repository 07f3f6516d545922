"""Local generation on the tiny trained model: greedy determinism, streaming, stop strings,
max_tokens, sampling seeds, chat templates, cancellation and every refusal."""

from __future__ import annotations

import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.errors import BackendError, InputError
from edgeinfer.generate import STOP_REASONS, GenerativeModel

pytestmark = pytest.mark.timeout(300)

PROMPT = "the quick brown"


def test_load_returns_a_generative_model(tiny_bundle: Bundle) -> None:
    with edgeinfer.load(tiny_bundle.path, threads=1) as model:
        assert isinstance(model, GenerativeModel)
        assert model.name == "tiny-llm"
        assert model.version == 1
        assert model.context_length == 128
        assert model.vocab_size == 300


def test_greedy_is_deterministic_and_continues_the_training_text(tiny: GenerativeModel) -> None:
    a = tiny.generate(PROMPT, max_tokens=12)
    b = tiny.generate(PROMPT, max_tokens=12)
    assert a.token_ids == b.token_ids
    assert a.text == b.text
    assert a.text.startswith(" fox jumps over")  # what the model was trained on
    assert a.stop_reason == "max_tokens"
    assert len(a.token_ids) == 12
    assert a.prompt_tokens == len(tiny.encode(PROMPT))
    assert a.ttft_s > 0 and a.tokens_per_s > 0 and a.total_s >= a.ttft_s
    assert a.text == tiny.decode(a.token_ids)


def test_stream_yields_the_text_generate_returns(tiny: GenerativeModel) -> None:
    whole = tiny.generate(PROMPT, max_tokens=30)
    stream = tiny.stream(PROMPT, max_tokens=30)
    pieces = list(stream)
    assert len(pieces) > 5  # the text comes in pieces, not at the end
    assert "".join(pieces) == whole.text
    assert stream.result is not None
    assert stream.result.token_ids == whole.token_ids
    assert stream.result.stop_reason == "max_tokens"


@pytest.mark.parametrize(
    ("stop", "first"), [("lazy", "lazy"), ([" dog", "lazy"], "lazy"), ("y d", "y d")]
)
def test_stop_strings_end_the_text_before_them(
    tiny: GenerativeModel, stop: object, first: str
) -> None:
    full = tiny.generate(PROMPT, max_tokens=30).text
    got = tiny.generate(PROMPT, max_tokens=30, stop=stop)  # type: ignore[arg-type]
    assert got.stop_reason == "stop"
    assert got.text == full[: full.index(first)]
    streamed = "".join(tiny.stream(PROMPT, max_tokens=30, stop=stop))  # type: ignore[arg-type]
    assert streamed == got.text


def test_a_stop_string_never_met_changes_nothing(tiny: GenerativeModel) -> None:
    plain = tiny.generate(PROMPT, max_tokens=20)
    other = tiny.generate(PROMPT, max_tokens=20, stop=["zebra"])
    assert (other.text, other.token_ids, other.stop_reason) == (
        plain.text,
        plain.token_ids,
        "max_tokens",
    )


def test_max_tokens_bounds_the_generation(tiny: GenerativeModel) -> None:
    for n in (1, 5):
        g = tiny.generate(PROMPT, max_tokens=n)
        assert len(g.token_ids) == n
        assert g.stop_reason == "max_tokens"
    assert (
        tiny.generate(PROMPT, max_tokens=5).token_ids
        == tiny.generate(PROMPT, max_tokens=20).token_ids[:5]
    )


def test_a_full_context_ends_the_generation(tiny: GenerativeModel) -> None:
    prompt = "the lazy dog " * 15
    n = len(tiny.encode(prompt))
    g = tiny.generate(prompt, max_tokens=100)
    assert g.stop_reason == "context"
    assert n + len(g.token_ids) == tiny.context_length


def test_sampling_is_reproducible_with_a_seed(tiny: GenerativeModel) -> None:
    kw = {"max_tokens": 24, "temperature": 1.5, "top_k": 0, "top_p": 1.0}
    a = tiny.generate("the", seed=7, **kw)  # type: ignore[arg-type]
    b = tiny.generate("the", seed=7, **kw)  # type: ignore[arg-type]
    assert a.token_ids == b.token_ids
    others = {tiny.generate("the", seed=s, **kw).token_ids for s in range(1, 6)}  # type: ignore[arg-type]
    assert len(others) > 1  # different seeds, different samples
    greedy = tiny.generate("the", max_tokens=24).token_ids
    assert any(t != greedy for t in others)


def test_top_k_one_is_greedy(tiny: GenerativeModel) -> None:
    greedy = tiny.generate(PROMPT, max_tokens=16)
    sampled = tiny.generate(PROMPT, max_tokens=16, temperature=1.0, top_k=1, seed=3)
    assert sampled.token_ids == greedy.token_ids


def test_chat_goes_through_the_models_template(tiny: GenerativeModel) -> None:
    messages = [{"role": "user", "content": "the quick"}]
    rendered = tiny.render_chat(messages)
    assert rendered == "<|im_start|>user\nthe quick<|im_end|>\n<|im_start|>assistant\n"
    chat = tiny.generate(messages, max_tokens=10)
    same = tiny.generate(rendered, max_tokens=10)
    assert chat.token_ids == same.token_ids
    assert chat.prompt_tokens == len(tiny.encode(rendered))


def test_closing_a_stream_stops_generating(tiny: GenerativeModel) -> None:
    stream = tiny.stream(PROMPT, max_tokens=100)
    first = next(stream)
    assert first
    stream.close()
    assert stream.result is not None
    assert stream.result.stop_reason == "cancelled"
    assert 1 <= len(stream.result.token_ids) < 10
    with pytest.raises(StopIteration):
        next(stream)
    with tiny.stream(PROMPT, max_tokens=100) as s2:  # leaving the block closes it
        for _ in s2:
            break
    assert s2.result is not None and s2.result.stop_reason == "cancelled"
    assert {g.stop_reason for g in (stream.result, s2.result)} <= set(STOP_REASONS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, r"max_tokens 0 is invalid; expected an integer >= 1"),
        ({"max_tokens": 2.5}, r"max_tokens 2.5 is invalid"),
        ({"temperature": -0.1}, r"temperature -0.1 is invalid; expected a number from 0"),
        ({"temperature": float("nan")}, r"temperature nan is invalid"),
        ({"top_p": 0.0}, r"top_p 0.0 is invalid; expected a number in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p 1.5 is invalid"),
        ({"top_k": -1}, r"top_k -1 is invalid; expected an integer >= 0"),
        ({"stop": [""]}, r"stop \[''\] is invalid; expected a list of non-empty strings"),
        ({"seed": -3}, r"seed -3 is invalid; expected an integer >= 0 or None"),
    ],
)
def test_bad_parameters_are_refused_before_generating(
    tiny: GenerativeModel, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        tiny.generate(PROMPT, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=match):
        tiny.stream(PROMPT, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        ("", r"prompt is empty; expected some text to continue"),
        (42, r"prompt must be a string or a list of messages, got int"),
        ([], r"messages must be a non-empty list .* \(empty\)"),
        ([{"role": "robot", "content": "hi"}], r"messages\[0\]: role 'robot' is not one of"),
        ([{"role": "user", "content": 3}], r"messages\[0\]: content must be a string, got int"),
        ([{"role": "user", "text": "hi"}], r"messages\[0\] must be an object with 'role'"),
    ],
)
def test_bad_prompts_are_refused(tiny: GenerativeModel, prompt: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        tiny.generate(prompt)  # type: ignore[arg-type]


def test_a_prompt_longer_than_the_context_is_refused(tiny: GenerativeModel) -> None:
    prompt = "the quick brown fox " * 60
    with pytest.raises(
        InputError, match=r"prompt is \d+ tokens; model 'tiny-llm' has a context of 128"
    ):
        tiny.generate(prompt)


def test_generative_load_refuses_what_does_not_apply(tiny_bundle: Bundle) -> None:
    with pytest.raises(InputError, match=r"generative models run on the CPU here"):
        edgeinfer.load(tiny_bundle.path, providers=["cuda"])
    with pytest.raises(InputError, match=r"option\(s\) spinning do not apply"):
        edgeinfer.load(tiny_bundle.path, spinning=True)


def test_a_closed_model_refuses_to_generate(tiny_bundle: Bundle) -> None:
    model = edgeinfer.load(tiny_bundle.path, threads=1)
    model.close()
    with pytest.raises(BackendError, match=r"model 'tiny-llm' is closed"):
        model.generate(PROMPT)  # type: ignore[attr-defined]


def test_threads_share_one_model(tiny: GenerativeModel) -> None:
    """Each call has its own generator and KV cache: concurrent greedy calls agree."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["the quick brown", "edge devices run", "a small model", "the lazy"]
    want = [tiny.generate(p, max_tokens=20).token_ids for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: tiny.generate(p, max_tokens=20).token_ids, prompts * 3))
    assert got == want * 3


def test_a_stream_not_yet_read_does_not_count_the_wait(tiny: GenerativeModel) -> None:
    import time

    called = time.perf_counter()
    stream = tiny.stream(PROMPT, max_tokens=4)
    time.sleep(0.3)  # the caller is busy before reading: not the model's time
    list(stream)
    wall = time.perf_counter() - called
    assert stream.result is not None
    assert stream.result.ttft_s <= stream.result.total_s <= wall - 0.3
