"""Continuing a generation on the device from tokens another copy of the model generated
(what the generative offloader does when the network breaks a stream off)."""

from __future__ import annotations

import pytest

from edgeinfer.errors import InputError
from edgeinfer.generate import GenerateOptions, GenerativeModel

pytestmark = pytest.mark.timeout(120)

PROMPT = "the quick brown"


# ---------------------------------------------------------------- resuming on the device
@pytest.mark.parametrize("stop", [None, ["lazy"]])
def test_resume_continues_token_for_token(tiny: GenerativeModel, stop: list[str] | None) -> None:
    whole = tiny.generate(PROMPT, max_tokens=40, stop=stop)
    ids = tiny.prompt_ids(PROMPT)
    opts = GenerateOptions.of(max_tokens=40, stop=stop)
    for k in sorted({0, 1, 5, len(whole.token_ids) // 2, len(whole.token_ids)}):
        done = whole.token_ids[:k]
        shown = tiny.decode(done) if stop is None else ""
        rest = tiny.resume(ids, done, opts, shown=shown)
        assert shown + "".join(rest) == whole.text, k
        assert rest.result is not None
        assert rest.result.token_ids == whole.token_ids
        assert rest.result.text == whole.text
        assert rest.result.stop_reason == whole.stop_reason


def test_resume_refuses_ids_outside_the_vocabulary(tiny: GenerativeModel) -> None:
    with pytest.raises(InputError, match=r"generated token ids must be ids in \[0, "):
        tiny.resume(tiny.prompt_ids(PROMPT), [tiny.vocab_size], GenerateOptions())
