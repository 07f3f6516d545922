"""Generative models on the device: a small language model's bundle, loaded with
:func:`edgeinfer.load` (or :func:`load` here), continues a prompt or a chat with
``generate`` (a :class:`Generation`) or ``stream`` (text pieces as they come), over
onnxruntime-genai (the ``generate`` extra)."""

from edgeinfer.generate.bundle import GOLDEN_PROMPTS, create_bundle
from edgeinfer.generate.model import GenerativeModel, TextStream, load, open_generative
from edgeinfer.generate.options import STOP_REASONS, GenerateOptions, Generation

__all__ = [
    "GOLDEN_PROMPTS",
    "STOP_REASONS",
    "GenerateOptions",
    "Generation",
    "GenerativeModel",
    "TextStream",
    "create_bundle",
    "load",
    "open_generative",
]
