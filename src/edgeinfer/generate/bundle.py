"""Bundles of generative models: every file of an onnxruntime-genai model directory (the
ONNX graph, its external data, ``genai_config.json``, the tokenizer and chat template),
each listed with its size and sha256, and a golden sample of greedy continuations that a
device reproduces token for token before it trusts a new version
(:meth:`~edgeinfer.bundle.Bundle.check_golden` calls :meth:`GenerativeModel.predict`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import BundleError
from edgeinfer.generate.model import TOKEN_INPUTS, TOKEN_OUTPUTS, GenerativeModel
from edgeinfer.manifest import GenerativeSpec, Golden
from edgeinfer.runtime.bundle import Bundle

__all__ = ["GOLDEN_PROMPTS", "INPUTS", "OUTPUTS", "create_bundle"]

# Fixed prompts whose greedy continuations are the golden sample.
GOLDEN_PROMPTS = ("The capital of France is", "Once upon a time,", "def add(a, b):")
INPUTS, OUTPUTS = TOKEN_INPUTS, TOKEN_OUTPUTS  # the token-level signature it declares


def create_bundle(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    version: int = 1,
    golden_prompts: Sequence[str] = GOLDEN_PROMPTS,
    golden_max_tokens: int = 16,
    quantization: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: str | None = None,
    source_sha256: str | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Bundle an onnxruntime-genai model directory; record its golden continuations.

    >>> create_bundle("build/smollm2-int4", "bundles/smollm2", name="smollm2",
    ...               quantization={"precision": "int4"})  # doctest: +SKIP
    """
    src = Path(model_dir)
    if not (src / "genai_config.json").is_file():
        raise BundleError(f"{src}: no genai_config.json (expected an onnxruntime-genai model)")
    genai = json.loads((src / "genai_config.json").read_text(encoding="utf-8"))["model"]
    filename = str(genai["decoder"]["filename"])
    with GenerativeModel(src) as model:
        inputs = {
            f"prompt_{i}": np.asarray(model.encode(p), np.int64)
            for i, p in enumerate(golden_prompts)
        }
        golden = (
            Golden(inputs, model.predict_n(inputs, golden_max_tokens)) if golden_prompts else None
        )
        spec = GenerativeSpec(
            context_length=model.context_length,
            vocab_size=model.vocab_size,
            chat_template=model.chat_template,
            quantization=dict(quantization) if quantization else None,
            golden_max_tokens=golden_max_tokens if golden_prompts else 0,
        )
    return Bundle.create_generative(
        src,
        out_dir,
        name=name,
        version=version,
        spec=spec,
        inputs=INPUTS,
        outputs=OUTPUTS,
        golden=golden,
        metrics=metrics,
        recipe=quantization,
        source=source,
        source_sha256=source_sha256,
        model_file=filename,
        overwrite=overwrite,
    )
