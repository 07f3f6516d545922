"""How well a language model predicts held-out text: perplexity, and next-token agreement.

:func:`score` runs the decoder ONNX model of an onnxruntime-genai model directory with plain
ONNX Runtime over the text's tokens, in windows of ``window`` tokens (each from an empty KV
cache: the ``past_key_values`` inputs get zero-length tensors), and reads every position's
logits at once. It gives the perplexity (``exp`` of the mean negative log-likelihood of each
token after the first of its window) and the greedy next-token predictions; against a
reference model's predictions (the float model's) it gives the agreement, the share of
positions where both models would pick the same next token.

>>> ids = token_ids("build/smollm2-fp32", HELDOUT_TEXT)             # doctest: +SKIP
>>> ref = score("build/smollm2-fp32", ids)                          # doctest: +SKIP
>>> score("build/smollm2-int4", ids, reference=ref.predictions)    # doctest: +SKIP
Quality(perplexity=..., agreement=..., tokens=...)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import BackendError, InputError
from edgeinfer.generate._heldout import HELDOUT_TEXT

__all__ = ["HELDOUT_TEXT", "MIN_TOKENS", "Quality", "read_text", "score", "token_ids"]

MIN_TOKENS = 16  # fewer scored tokens than this measure nothing
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Quality:
    """Perplexity on the text, the predictions behind it, agreement with a reference."""

    perplexity: float
    tokens: int  # tokens scored (each window's first token is context only)
    agreement: float | None = None  # share of positions predicting the reference's token
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)

    def metrics(self) -> dict[str, float]:
        out = {"perplexity": self.perplexity}
        if self.agreement is not None:
            out["agreement"] = self.agreement
        return out


def read_text(path: str | os.PathLike[str] | None) -> str:
    """The held-out text in ``path`` (UTF-8), or the packaged one for ``None``."""
    if path is None:
        return HELDOUT_TEXT
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such eval text file (expected a UTF-8 .txt file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text (expected a UTF-8 .txt file)") from None
    if not text.strip():
        raise InputError(f"{p}: the eval text is empty (expected a few KB of English text)")
    return text


def _genai(model_dir: Path) -> dict[str, Any]:
    cfg = model_dir / "genai_config.json"
    if not cfg.is_file():
        raise InputError(f"{model_dir}: no genai_config.json (expected an onnxruntime-genai model)")
    model: dict[str, Any] = json.loads(cfg.read_text(encoding="utf-8"))["model"]
    return model


def token_ids(model_dir: str | os.PathLike[str], text: str) -> list[int]:
    """The tokens of ``text`` with the model's own tokenizer (no chat template)."""
    import onnxruntime_genai as og

    d = Path(model_dir)
    _genai(d)
    try:
        tok = og.Tokenizer(og.Model(os.fspath(d)))
    except RuntimeError as exc:
        raise BackendError(f"{d}: onnxruntime-genai cannot load the model: {exc}") from exc
    return [int(t) for t in tok.encode(text)]


def _windows(ids: Sequence[int], size: int) -> list[list[int]]:
    out = [list(ids[i : i + size]) for i in range(0, len(ids), size)]
    return [w for w in out if len(w) >= 2]


def _session(model_dir: Path, threads: int | None) -> tuple[Any, dict[str, Any]]:
    import onnxruntime as ort

    genai = _genai(model_dir)
    path = model_dir / str(genai["decoder"]["filename"])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise BackendError(f"{path}: ONNX Runtime cannot load the decoder: {exc}") from exc
    return session, genai


def _feeds(session: Any, genai: dict[str, Any], window: list[int]) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, position_ids if asked for, and an empty KV cache."""
    dec = genai["decoder"]
    names = dec.get("inputs", {})
    ids = np.asarray([window], np.int64)
    n = len(window)
    known = {
        names.get("input_ids", "input_ids"): ids,
        names.get("attention_mask", "attention_mask"): np.ones((1, n), np.int64),
        names.get("position_ids", "position_ids"): np.arange(n, dtype=np.int64)[None],
    }
    past = [
        re.compile("^" + re.escape(p).replace("%d", r"\d+") + "$")
        for p in (names.get("past_key_names"), names.get("past_value_names"))
        if p
    ]
    heads, size = int(dec["num_key_value_heads"]), int(dec["head_size"])
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        if arg.name in known:
            feeds[arg.name] = known[arg.name].astype(
                np.int32 if arg.type == "tensor(int32)" else np.int64
            )
        elif any(p.match(arg.name) for p in past):
            dtype = _DTYPES.get(arg.type, np.float32)
            feeds[arg.name] = np.zeros((1, heads, 0, size), dtype)
        else:
            raise InputError(f"the decoder has an input {arg.name!r} this scorer cannot feed")
    return feeds


def score(
    model_dir: str | os.PathLike[str],
    ids: Sequence[int],
    *,
    window: int = 256,
    threads: int | None = None,
    reference: np.ndarray | None = None,
) -> Quality:
    """Perplexity of the model in ``model_dir`` on token ids ``ids``; agreement with
    ``reference`` (another model's :attr:`Quality.predictions` on the same ids)."""
    d = Path(model_dir)
    session, genai = _session(d, threads)
    size = max(2, min(int(window), int(genai["context_length"])))
    parts = _windows(ids, size)
    if sum(len(w) - 1 for w in parts) < MIN_TOKENS:
        raise InputError(
            f"the eval text is {len(ids)} tokens; expected at least {MIN_TOKENS + 1} "
            "(a few sentences of English)"
        )
    logits_name = str(genai["decoder"].get("outputs", {}).get("logits", "logits"))
    nll: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    for w in parts:
        try:
            (logits,) = session.run([logits_name], _feeds(session, genai, w))
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise BackendError(f"{d}: the decoder failed on the eval text: {exc}") from exc
        lg = np.asarray(logits[0, :-1], np.float64)  # position i predicts token i + 1
        top = lg.max(axis=-1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(lg - top).sum(axis=-1))
        nxt = np.asarray(w[1:], np.int64)
        nll.append(logz - lg[np.arange(len(nxt)), nxt])
        preds.append(lg.argmax(axis=-1))
    losses = np.concatenate(nll)
    predictions = np.concatenate(preds).astype(np.int64)
    agreement = None
    if reference is not None:
        if reference.shape != predictions.shape:
            raise InputError(
                f"reference predictions cover {reference.size} tokens; these cover "
                f"{predictions.size} (score both models on the same ids and window)"
            )
        agreement = float(np.mean(reference == predictions))
    return Quality(float(math.exp(losses.mean())), int(losses.size), agreement, predictions)
