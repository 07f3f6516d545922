"""A tiny language model for the demo's predictive-text stage, trained here in seconds.

A byte-level BPE tokenizer and a 2-layer Llama (hidden 64) trained on a few repeated
sentences until it completes them, then onnxruntime-genai's model builder at fp32: the
route SmolLM2's build takes, small enough to need no download and little time. The built
model directory is cached in ``cache_dir()/demo/tiny-lm-<recipe>/``, keyed by this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeinfer.bundle import cache_dir

__all__ = ["SENTENCES", "TEXT", "model_dir"]

SENTENCES = (
    "the quick brown fox jumps over the lazy dog. ",
    "a small model runs on the device and answers without the network. ",
    "edge devices run models where the data is. ",
)
TEXT = "".join(SENTENCES) * 40  # what it is trained on
_CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def model_dir(root: Path | None = None) -> Path:
    """The tiny model's onnxruntime-genai directory: built once, then cached under ``root``
    (default: the user cache's ``demo`` folder; the tests keep theirs in the temp folder)."""
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    dest = (root or cache_dir() / "demo") / f"tiny-lm-{recipe}"
    if (dest / "genai_config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-lm.", dir=dest.parent))
    try:
        _build(scratch)
        with contextlib.suppress(OSError):  # another process finished first: the same model
            os.replace(scratch / "model", dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


def _build(scratch: Path, steps: int = 150, context: int = 128) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf_lib: Any = importlib.import_module("transformers")  # untyped: used through Any

    text = TEXT
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=_SPECIALS, initial_alphabet=alphabet
    )
    tok.train_from_iterator([text], trainer)
    fast = hf_lib.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = _CHAT
    hf = scratch / "hf"
    fast.save_pretrained(hf)
    ids = torch.tensor([tok.encode(text).ids[: 64 * 8]]).view(8, 64)
    config = hf_lib.LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tok.token_to_id("<|endoftext|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        torch.manual_seed(0)
        model = hf_lib.LlamaForCausalLM(config)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(hf)
    gen = hf / "generation_config.json"
    if gen.exists():
        data = json.loads(gen.read_text())
        data.pop("transformers_version", None)
        gen.write_text(json.dumps(data))
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
        "-o", str(scratch / "model"), "-p", "fp32", "-e", "cpu", "-c", str(scratch / "cache"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not (scratch / "model" / "genai_config.json").is_file():
        from edgeinfer.errors import BackendError

        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise BackendError(f"onnxruntime-genai's model builder failed on the tiny model: {tail[0]}")
