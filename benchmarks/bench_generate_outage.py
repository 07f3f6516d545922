"""Generation through a link that is cut mid-stream: does the device finish every one, and
how long does the caller wait at the switch?

An edge server (``edgeinfer serve``, in a background thread) runs a language model behind
the network emulator (``NetemProxy``, RTT ``--rtt``); the device runs the same bundle, and a
``GenerativeOffloader`` (policy ``remote``) streams each generation from the server. Each of
``--generations`` greedy generations of ``--tokens`` tokens has the link cut at a random
piece among the first half: ``refuse`` resets the connection (the default; what a dropped
Wi-Fi looks like to the socket) or ``blackhole`` stalls it (the gap threshold notices).
After each, the link comes back and the server's breaker is let close again. Three ways
of resuming run (``--resume exact,fast,follow``): the received tokens fed one at a time
at the switch (the default, identical text), in one pass with the prompt (``fast``), or
fed to the device's model as they arrive, on a thread (``follow``: the device decodes
along with the server, and the switch has nothing to replay).

Reported:
- failed generations: an exception, or a stream that ended without finishing [target 0];
  and generations whose text is not the device's own greedy text token for token (with
  ``exact`` resume it must be none; ``fast`` resume may drift on a quantized model);
- extra latency at the switch: the longest wait between two pieces after the cut, less
  the generation's median wait between pieces, against the device's own time to first
  token for the prompt [target: <= it + 100 ms]; and, measured alone, the device's time
  from resuming to its first new piece (``resume_s``).

Model: SmolLM2-135M int4 by default (``--model smollm2``, built and cached on first use),
or the demo's tiny model (``--model tiny``, trained in seconds, then cached; it writes a
whole stream in a few milliseconds, so few cuts fall inside one).

Run: .venv/bin/python benchmarks/bench_generate_outage.py [--generations 20] [--mode refuse]
Writes benchmarks/results/generate_outage.json (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write


def _model_dir(which: str) -> Path:
    if which == "smollm2":
        from edgeinfer.zoo import smollm

        return smollm.model_dir("int4")
    from edgeinfer.demo._tiny_lm import model_dir

    return model_dir()


def _resume_s(model: Any, ids: list[int], done: tuple[int, ...], opts: Any, exact: bool) -> float:
    """Seconds to the device's first new piece when it resumes after ``done`` (median of 3)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        stream = model.resume(ids, done, opts, shown=model.decode(done), exact=exact)
        for _ in stream:
            break
        times.append(time.perf_counter() - start)
        stream.close()
    return statistics.median(times)


def _ttft_s(model: Any, prompt: str, opts: Any) -> float:
    """The device's own time to first token for ``prompt`` (median of 3)."""
    return statistics.median(model.generate(prompt, max_tokens=2).ttft_s for _ in range(3))


def _run_mode(
    args: argparse.Namespace, mode: str, served: str, model: Any, prompts: list[str]
) -> list[dict[str, Any]]:
    """``args.generations`` generations, each cut at a random piece; one record each."""
    from edgeinfer.generate import GenerateOptions
    from edgeinfer.netem import NetemProxy
    from edgeinfer.offload import BreakerConfig
    from edgeinfer.offload.generation import GenerativeOffloader, GenerativeOffloaderConfig

    rng = random.Random(args.seed)
    exact = mode != "fast"
    config = GenerativeOffloaderConfig(
        gap_s=args.gap,
        exact_resume=exact,
        follow=mode == "follow",
        breaker=BreakerConfig(failures=3, open_s=0.1, max_open_s=0.2),
    )
    opts = GenerateOptions(max_tokens=args.tokens)
    want = {p: model.generate(p, max_tokens=args.tokens) for p in prompts}
    ttft = {p: _ttft_s(model, p, opts) for p in prompts}
    runs: list[dict[str, Any]] = []
    with (
        NetemProxy(served, rtt=args.rtt) as link,
        GenerativeOffloader(model, link.url, "remote", config=config) as off,
    ):
        for g in range(args.generations):
            prompt = prompts[g % len(prompts)]
            cut = rng.randrange(1, args.tokens // 2)
            arrivals: list[float] = []
            text: list[str] = []
            cut_at = None
            error = None
            result = None
            try:
                pieces = off.stream(prompt, max_tokens=args.tokens)
                for i, piece in enumerate(pieces):
                    arrivals.append(time.perf_counter())
                    text.append(piece)
                    if i == cut:
                        link.outage(None, mode=args.mode)
                        cut_at = time.perf_counter()
                result = pieces.result
            except Exception as exc:  # counted as a failed generation
                error = f"{type(exc).__name__}: {exc}"
            link.restore()
            finished = error is None and result is not None and result.stop_reason != "cancelled"
            same = (
                finished
                and result is not None
                and result.token_ids == want[prompt].token_ids
                and "".join(text) == want[prompt].text
            )
            run: dict[str, Any] = {
                "prompt": prompt,
                "cut_after_piece": cut,
                "failed": not finished,
                "same_as_local": same,
                "error": error,
                "where": None if result is None else result.where,
                "switched_at": None if result is None else result.switched_at,
                "fallback_reason": None if result is None else result.fallback_reason,
                "local_ttft_s": ttft[prompt],
            }
            if result is not None and result.switched_at is not None and cut_at is not None:
                waits = [b - a for a, b in itertools.pairwise(arrivals)]
                wait = statistics.median(waits) if waits else 0.0
                after = [t for t in arrivals if t > cut_at]
                stall = max((b - a for a, b in itertools.pairwise([cut_at, *after])), default=0.0)
                done = want[prompt].token_ids[: result.switched_at]
                ids = model.prompt_ids(prompt)
                run.update(
                    stall_s=stall,
                    median_wait_s=wait,
                    extra_s=stall - wait,
                    resume_s=None if mode == "follow" else _resume_s(model, ids, done, opts, exact),
                    within_target=stall - wait <= ttft[prompt] + 0.1,
                )
            runs.append(run)
            deadline = time.monotonic() + 5.0  # the link is back: let the breaker close
            while not off.breaker(0).closed and time.monotonic() < deadline:
                off.decide(prompt)
                time.sleep(0.05)
    return runs


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    switched = [r for r in runs if "extra_s" in r]
    extra = [r["extra_s"] for r in switched]
    resumes = [r["resume_s"] for r in switched if r["resume_s"] is not None]
    return {
        "generations": len(runs),
        "failed": sum(r["failed"] for r in runs),
        "text_differs_from_local": sum(not r["failed"] and not r["same_as_local"] for r in runs),
        "switched": len(switched),
        "finished_remotely_before_the_cut": sum(
            not r["failed"] and r["switched_at"] is None for r in runs
        ),
        "extra_latency_median_s": statistics.median(extra) if extra else None,
        "extra_latency_max_s": max(extra) if extra else None,
        "local_ttft_median_s": statistics.median(r["local_ttft_s"] for r in runs),
        "resume_median_s": statistics.median(resumes) if resumes else None,
        "within_target": sum(r["within_target"] for r in switched),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--mode", choices=("refuse", "blackhole"), default="refuse")
    ap.add_argument("--rtt", default="10ms")
    ap.add_argument("--gap", type=float, default=1.0, help="stall threshold, seconds")
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    ap.add_argument(
        "--resume", default="exact,fast,follow", help="exact, fast, follow (comma-separated)"
    )
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, each side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="generate_outage", help="results/<out>.json")
    args = ap.parse_args()

    from edgeinfer.generate import create_bundle, load
    from edgeinfer.serve import BackgroundServer, ServeConfig

    prompts = ["the quick brown", "a small model runs", "edge devices run"]
    if args.model == "smollm2":
        prompts = ["The capital of France is", "Once upon a time,", "def add(a, b):"]
    work = Path(tempfile.mkdtemp(prefix="bench-generate-outage-"))
    modes: dict[str, Any] = {}
    try:
        bundle = create_bundle(_model_dir(args.model), work / "bundle", name="lm")
        shutil.copytree(bundle.path, work / "repo" / "lm" / "1")
        serve = ServeConfig(
            work / "repo", port=0, grpc_port=None, poll_interval_s=None, threads=args.threads
        )
        with (
            BackgroundServer(serve) as server,
            load(bundle.path, threads=args.threads) as model,
        ):
            for mode in args.resume.split(","):
                runs = _run_mode(args, mode, server.url.split("//", 1)[1], model, prompts)
                modes[mode] = {"summary": _summary(runs), "runs": runs}
                print(mode, json.dumps(modes[mode]["summary"], indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "benchmark": "generate_outage",
        "setup": {
            "model": args.model,
            "tokens": args.tokens,
            "mode": args.mode,
            "rtt": args.rtt,
            "gap_s": args.gap,
            "threads": args.threads,
            "server": "edgeinfer serve on 127.0.0.1 in this process, behind NetemProxy",
            "device": "this machine, the same bundle, greedy",
            "targets": {"failed": 0, "extra_latency": "<= local time to first token + 100 ms"},
        },
        "resume": modes,
    }
    write(args.out, out)


if __name__ == "__main__":
    main()
