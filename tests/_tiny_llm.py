"""A tiny Llama-architecture language model trained here in seconds, for fast generation tests.

Byte-level BPE from ``tokenizers`` on a small repetitive text, a 2-layer ``LlamaForCausalLM``
(hidden 64) trained until it continues that text, then onnxruntime-genai's model builder at
fp32: the same route the real SmolLM2 build takes, small enough for every test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a small model runs on the device and answers without the network. "
    "edge devices run models where the data is. "
) * 40


def build_tiny(out: Path, steps: int = 150, context: int = 128) -> Path:
    """Train the tiny model and build it into ``out`` (a genai model directory)."""
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread of a busy box
    try:
        _train_and_save(out, context, steps)
    finally:
        torch.set_num_threads(threads)
    hf = out.parent / f"{out.name}-hf"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf),
            "-o",
            str(out),
            "-p",
            "fp32",
            "-e",
            "cpu",
            "-c",
            str(out.parent / "builder-cache"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def _train_and_save(out: Path, context: int, steps: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    hf = out.parent / f"{out.name}-hf"
    fast.save_pretrained(hf)

    ids = torch.tensor([tok.encode(TEXT).ids[: 64 * 8]]).view(8, 64)
    config = LlamaConfig(
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
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(hf)
    gen = hf / "generation_config.json"
    if gen.exists():
        data = json.loads(gen.read_text())
        data.pop("transformers_version", None)
        gen.write_text(json.dumps(data))
