"""Demo stage: predictive text that offloads to an edge server when the link is good and
finishes on the device, token for token, when the link drops mid-sentence.

The device and an edge server (``edgeinfer serve`` in a background thread, behind the
network emulator) hold the same language model: SmolLM2-135M when its build is cached
(``edgeinfer.zoo.smollm.build`` made one) and the demo is not in fast mode, else a tiny
model trained here in seconds (then cached).
Three phases of completions: the link down from the start (the device completes alone),
the link good (the server completes), and the link cut at a random token of each
completion (the server begins, the device finishes). Every completion is checked against
the device's own greedy completion of the same prompt.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Predictive text: offloaded while the link holds, finished on the device when it drops"

_TINY_PROMPTS = ("the quick brown", "a small model runs", "edge devices run", "the lazy")
_SMOLLM_PROMPTS = ("The capital of France is", "Once upon a time,", "def add(a, b):")


def _smollm_cached() -> Path | None:
    """SmolLM2's built model directory when a build is cached (never built here: slow)."""
    from edgeinfer.bundle import cache_dir

    path = cache_dir() / "zoo" / "smollm2" / "int4"
    return path if (path / "genai_config.json").is_file() else None


def _bundle(ctx: DemoContext) -> tuple[Path, tuple[str, ...], str]:
    """The bundle to complete with, its prompts, and what it is."""
    from edgeinfer.demo._tiny_lm import model_dir
    from edgeinfer.generate import create_bundle

    out = ctx.workdir / "bundles" / "predictive-text"
    smollm = None if ctx.fast else _smollm_cached()
    if smollm is not None:
        bundle = create_bundle(smollm, out, name="predictive-text", overwrite=True)
        return bundle.path, _SMOLLM_PROMPTS, "SmolLM2-135M int4 (cached build)"
    bundle = create_bundle(model_dir(), out, name="predictive-text", overwrite=True)
    return bundle.path, _TINY_PROMPTS, "a tiny 2-layer model trained here"


def _reconnect(off: Any, prompt: str, timeout: float = 5.0) -> None:
    """Wait until the server is back in the running (its breaker closed by a trial probe)."""
    deadline = time.monotonic() + timeout
    while not off.breaker(0).closed and time.monotonic() < deadline:
        off.decide(prompt)  # lets the breaker's half-open trial probe the server, when due
        time.sleep(0.05)


def run(ctx: DemoContext) -> None:
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.generate import load
    from edgeinfer.netem import NetemProxy
    from edgeinfer.offload import BreakerConfig
    from edgeinfer.offload.generation import GenerativeOffloader, GenerativeOffloaderConfig
    from edgeinfer.serve import BackgroundServer, BatchConfig, ServeConfig

    console = ctx.console
    bundle, prompts, what = _bundle(ctx)
    repo = ctx.workdir / "generate-repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(bundle, repo / "predictive-text" / "1")
    tokens = 24 if ctx.fast else 32
    config = GenerativeOffloaderConfig(
        gap_s=1.0,  # a busy device's decoding can pause; a reset is noticed at once anyway
        probe_timeout_s=0.3,
        breaker=BreakerConfig(failures=2, open_s=0.2, max_open_s=0.5),
    )
    rng = random.Random(0)
    rows: list[tuple[str, str, str, bool]] = []
    failed = 0
    # The tiny model decodes a completion in milliseconds: in the server's child process
    # (the default) the whole stream reaches the device before the link can drop in the
    # middle of it. On a thread of the server, tokens come at the event loop's pace.
    batching = BatchConfig(generation_process=prompts is not _TINY_PROMPTS)
    serve_config = ServeConfig(
        repo, port=0, grpc_port=None, poll_interval_s=None, threads=1, batching=batching
    )
    with (
        BackgroundServer(serve_config) as server,
        NetemProxy(server.url.split("//", 1)[1], rtt="5ms", rate="20mbit") as link,
        load(bundle, threads=1) as model,
        # "remote": the server completes whenever it is reachable (the phone saves battery)
        GenerativeOffloader(model, link.url, "remote", config=config) as off,
    ):
        want = {p: model.generate(p, max_tokens=tokens).text for p in prompts}

        def complete(phase: str, prompt: str, cut: int | None = None) -> None:
            nonlocal failed
            try:
                pieces = off.stream(prompt, max_tokens=tokens)
                text = []
                for i, piece in enumerate(pieces):
                    text.append(piece)
                    if i == cut:
                        link.outage(None, mode="refuse")  # the link drops mid-sentence
                result = pieces.result
            except EdgeInferError:  # never expected: counted, not hidden
                failed += 1
                return
            finally:
                if cut is not None:
                    link.restore()
            assert result is not None
            rows.append((phase, prompt, result.where, "".join(text) == want[prompt]))

        link.outage(None, mode="refuse")
        for _ in range(config.breaker.failures):
            off.probe()  # the server is found unreachable (its breaker opens)
        for prompt in prompts:
            complete("link down", prompt)
        link.restore()
        _reconnect(off, prompts[0])
        for prompt in prompts:
            complete("link good", prompt)
        # A slow link (a weak cellular signal): the server's tokens queue on it, so those
        # after the cut are still in flight when it drops, however fast the model wrote them.
        link.set(rate="64kbit")
        for prompt in prompts:
            complete("link drops", prompt, cut=rng.randrange(1, tokens // 2))
            _reconnect(off, prompt)  # the link is back for the next completion
        stats = off.stats

    table = Table(title=f"completions of {tokens} tokens by {what}")
    for col in ("phase", "prompt", "where it ran", "= device's own"):
        table.add_column(col)
    for phase, prompt, where, same in rows:
        table.add_row(phase, repr(prompt), where, "yes" if same else "NO")
    console.print(table)
    console.print(
        f"{stats.requests} completions: {stats.local} began on the device, {stats.remote} on "
        f"the server, {stats.fallbacks} finished on the device after the link dropped, "
        f"{failed} failed"
    )
    phases: dict[str, dict[str, int]] = {}
    for phase, _, where, _ in rows:
        counts = phases.setdefault(phase, {})
        key = "fallback" if "->" in where else where
        counts[key] = counts.get(key, 0) + 1
    ctx.artifacts["generate_phases"] = phases
    ctx.artifacts["generate_failed"] = failed
    ctx.artifacts["generate_same"] = all(same for *_, same in rows)
    ctx.artifacts["generate_model"] = what
