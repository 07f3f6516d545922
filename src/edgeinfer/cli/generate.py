"""``edgeinfer generate BUNDLE --prompt TEXT``: continue a prompt with a generative bundle.

The text goes to stdout (piece by piece with ``--stream``), a one-line summary (tokens,
time to first token, decode rate, why it stopped) to stderr, so ``> out.txt`` keeps only
the text. With ``--offload URL`` an edge server generates when it can
(:class:`~edgeinfer.offload.generation.GenerativeOffloader`) and the device finishes what
the network breaks off; a second stderr line says where it ran and where it switched.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    offload: str | None = typer.Option(
        None,
        "--offload",
        metavar="URL",
        help="An edge server (edgeinfer serve) to generate on; the device finishes what it cannot.",
    ),
    policy: str = typer.Option(
        "remote", help="With --offload: placement policy (remote: the server when reachable)."
    ),
    remote_model: str | None = typer.Option(
        None, "--remote-model", help="With --offload: the model's name on the server."
    ),
    private: bool = typer.Option(False, help="With --offload: the prompt stays here."),
    follow: bool = typer.Option(
        False,
        help="With --offload: the device decodes along with the server, so a switch goes on "
        "at once (costs the device the decoding).",
    ),
) -> None:
    """Generate text with a generative bundle (a small language model) on this device."""
    from edgeinfer.generate import load

    with load(path, threads=threads) as model:
        what: str | list[dict[str, str]] = [{"role": "user", "content": prompt}] if chat else prompt
        args = (what, max_tokens, temperature, top_p, top_k, stop or None, seed)
        if offload is not None:
            _offloaded(model, offload, policy, remote_model, (private, follow), args, stream)
            return
        pieces = model.stream(*args)
        with pieces:
            _print(pieces, stream)
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


def _print(pieces: Iterator[str], stream: bool) -> None:
    for piece in pieces:
        if stream:
            sys.stdout.write(piece)
            sys.stdout.flush()


def _offloaded(
    model: Any,
    url: str,
    policy: str,
    remote_model: str | None,
    flags: tuple[bool, bool],
    args: tuple[Any, ...],
    stream: bool,
) -> None:
    from edgeinfer.offload.generation import GenerativeOffloader, GenerativeOffloaderConfig

    private, follow = flags
    config = GenerativeOffloaderConfig(follow=follow)
    with GenerativeOffloader(model, url, policy, model=remote_model, config=config) as off:
        pieces = off.stream(*args, private=private)
        with pieces:
            _print(pieces, stream)
    result = pieces.result
    assert result is not None  # a stream run to its end has a result
    sys.stdout.write(("" if stream else result.text) + "\n")
    sys.stdout.flush()
    typer.echo(
        f"{len(result.token_ids)} tokens after {result.prompt_tokens} of prompt, "
        f"first in {result.ttft_s * 1e3:.0f} ms, {result.total_s:.2f} s in all, "
        f"stop: {result.stop_reason}",
        err=True,
    )
    parts = ", ".join(
        f"{p.start}-{p.end} {p.placement}" + (f" ({p.remote})" if p.remote else "")
        for p in result.parts
    )
    line = f"ran: {result.where}; tokens {parts or 'none'}"
    if result.fallback_reason:
        line += f"; switched because: {result.fallback_reason}"
    # 80 columns, whether on a terminal or redirected; URLs and errors kept whole
    typer.echo(textwrap.fill(line, 80, subsequent_indent="  ", break_long_words=False), err=True)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
