"""``edgeinfer generate BUNDLE --prompt TEXT``: continue a prompt with a generative bundle.

The text goes to stdout (piece by piece with ``--stream``), a one-line summary (tokens,
time to first token, decode rate, why it stopped) to stderr, so ``> out.txt`` keeps only
the text.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def generate(
    path: Path = typer.Argument(..., help="Generative bundle directory or packed .tar."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, help="0: greedy (deterministic); > 0: sampling."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling probability mass."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest (0: all)."),
    seed: int | None = typer.Option(None, help="Sampling seed (same seed, same text)."),
    stop: list[str] | None = typer.Option(
        None, "--stop", metavar="<str>", help="End the text before this string (repeatable)."
    ),
    stream: bool = typer.Option(False, "--stream", help="Print the text as it is generated."),
    chat: bool = typer.Option(
        False, "--chat", help="Send the prompt as a user message through the chat template."
    ),
    threads: int | None = typer.Option(None, help="Intra-op threads (default: runtime's)."),
) -> None:
    """Generate text with a generative bundle (a small language model) on this device."""
    from edgeinfer.generate import load

    with load(path, threads=threads) as model:
        what: str | list[dict[str, str]] = [{"role": "user", "content": prompt}] if chat else prompt
        pieces = model.stream(what, max_tokens, temperature, top_p, top_k, stop or None, seed)
        with pieces:
            for piece in pieces:
                if stream:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        result = pieces.result
        assert result is not None  # a stream run to its end has a result
        if not stream:
            sys.stdout.write(result.text)
        sys.stdout.write("\n")
        sys.stdout.flush()
        rate = f"{result.tokens_per_s:.1f} tokens/s" if result.tokens_per_s else "- tokens/s"
        typer.echo(
            f"{len(result.token_ids)} tokens after {result.prompt_tokens} of prompt, "
            f"first in {result.ttft_s * 1e3:.0f} ms, {rate}, stop: {result.stop_reason}",
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
